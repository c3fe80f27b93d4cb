"""Where a search's experiment lives: a local folder, or a URI (s3://, gs://, file://) that pyarrow
reaches. Tune writes its results there itself; our own outputs (summary, report, export, study, W&B
runs) are written to a local folder first and uploaded next to them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from trainer.errors import UserError

EXPERIMENTS = Path("experiments")  # the default --storage-path, and the local folder of remote experiments


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class ExperimentPlace:
    """One experiment's two homes: `path` where Tune keeps it (a folder or a URI), and `out_dir`, the
    local folder of our own outputs (the same folder when the storage is local)."""

    storage_path: str  # absolute folder, or a URI
    name: str

    @classmethod
    def of(cls, storage_path: str, name: str) -> ExperimentPlace:
        """`storage_path` as the user gave it: a relative folder is made absolute (Tune needs it so)."""
        if "/" in name or name in ("", ".", ".."):
            raise UserError(f"--name {name!r}: an experiment name is one folder name (no '/', not '.' or '..')")
        return cls(storage_path if is_uri(storage_path) else str(Path(storage_path).resolve()), name)

    @property
    def remote(self) -> bool:
        return is_uri(self.storage_path)

    @property
    def path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def out_dir(self) -> Path:
        return (EXPERIMENTS.resolve() if self.remote else Path(self.storage_path)) / self.name

    def exists(self) -> bool:
        if not self.remote:
            return Path(self.path).exists()
        import pyarrow.fs

        remote, path = pyarrow.fs.FileSystem.from_uri(self.path)
        return remote.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def fetch(self, file_name: str) -> Path:
        """One file of the experiment, in its local folder: there already, or fetched from remote storage."""
        local = self.out_dir / file_name
        if local.is_file() or not self.remote:
            if not local.is_file():
                raise UserError(
                    f"{local}: not found; is {self.out_dir} a search folder? check --storage-path and --name"
                )
            return local
        import pyarrow.fs

        remote, path = pyarrow.fs.FileSystem.from_uri(f"{self.path}/{file_name}")
        if remote.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            raise UserError(f"{self.path}/{file_name}: not found; check --storage-path and --name")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(
            path, str(local), source_filesystem=remote, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
        return local

    def upload(self, names: tuple[str, ...], console: Console) -> None:
        """Put our outputs next to Tune's results on remote storage (a no-op for a local experiment)."""
        if not self.remote:
            return
        import pyarrow.fs

        remote, path = pyarrow.fs.FileSystem.from_uri(self.path)
        remote.create_dir(path, recursive=True)  # before Tune makes it, for the spec uploaded at the start
        for name in names:
            if (self.out_dir / name).is_dir():
                remote.create_dir(f"{path}/{name}", recursive=True)
            if (self.out_dir / name).exists():
                pyarrow.fs.copy_files(
                    str(self.out_dir / name),
                    f"{path}/{name}",
                    source_filesystem=pyarrow.fs.LocalFileSystem(),
                    destination_filesystem=remote,
                )
        console.print(f"uploaded {', '.join(names)} to {self.path}")
