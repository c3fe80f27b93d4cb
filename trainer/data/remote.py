"""`--data` in object storage: any pyarrow.fs URI (s3://bucket/prefix, gs://..., hdfs://...;
pyarrow comes with Ray), fetched once per node into the data cache (trainer.data.cache) and read
from there like a local folder, so a cluster needs no shared file system for its data.

The entry's key is the URI and its listing (each object's path, size and modification time): a
second run on the node lists the objects and, when nothing changed, fetches nothing. Credentials
and endpoints come from pyarrow's usual sources (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ~/.aws,
query parameters such as ?endpoint_override=host:port&scheme=http).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from trainer.data.cache import cached
from trainer.errors import UserError

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DATA = "data"  # the fetched files' folder inside the entry, beside its manifest
COPY_CHUNK = 8 * 1024**2


def is_uri(data: str) -> bool:
    return bool(URI.match(data))


def fetch_root(uri: str) -> Path:
    """The node-local folder holding a copy of everything under `uri`."""
    from pyarrow import fs

    try:
        filesystem, base = fs.FileSystem.from_uri(uri)
        listing = [i for i in filesystem.get_file_info(fs.FileSelector(base, recursive=True)) if i.is_file]
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError and others for bad URIs and denied access
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{uri}: cannot be listed ({message}); check the address, endpoint and credentials") from None
    if not listing:
        raise UserError(f"{uri}: holds no files; give the folder (prefix) that holds the data")
    files = sorted((info.path[len(base) :].lstrip("/"), info.size, info.mtime_ns) for info in listing)

    def fetch(folder: Path) -> dict[str, str]:
        for relative, _, _ in files:
            target = folder / DATA / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with filesystem.open_input_stream(f"{base.rstrip('/')}/{relative}") as source, open(target, "wb") as out:
                while chunk := source.read(COPY_CHUNK):
                    out.write(chunk)
        total = sum(size for _, size, _ in files)
        print(f"note: fetched {len(files)} files ({total / 1e6:.1f} MB) of {uri} into {folder}", file=sys.stderr)
        return {"uri": uri}

    entry = cached("remote", {"uri": uri, "files": files}, fetch, "fetching into a temporary folder instead")
    if entry is None:
        folder = Path(tempfile.mkdtemp(prefix="pix2pix-remote-"))
        fetch(folder)
        return folder / DATA
    return entry.folder / DATA
