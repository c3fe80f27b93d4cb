"""Cluster launcher configs: cluster.yaml (AWS) and cluster-onprem.yaml (local provider).

Both files go through the installed Ray's own `prepare_config` + `validate_config` (what
`ray up` runs before it touches any machine; offline, no boto3 needed), then through checks
of the properties the files promise: GPU workers declare GPUs, the head runs no trials, every
node installs the pinned project, RAY_AUTH_MODE is the same for `ray start` on head and
workers and for drivers, no secrets in the files, nothing opened to the world but SSH.

Each check is a small function returning a list of problems; the tests at the bottom feed
those functions broken configs to show that every check can fail.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config
from search_cli import ROOT

CONFIG_FILES = {"aws": ROOT / "cluster.yaml", "onprem": ROOT / "cluster-onprem.yaml"}
PROJECT_MOUNT = "~/pix2pix-tune"
TOKEN_MOUNT = "~/.ray/auth_token"
TORCH_PIN = "2.14.1"
TORCHVISION_PIN = "0.29.1"

# vCPUs and GPUs of the instance types a user is likely to pick (AWS instance type docs).
# Declaring more than the machine has would let Ray over-pack trials onto it.
AWS_GPU_INSTANCES = {
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6e.xlarge": (4, 1),
    "p3.2xlarge": (8, 1),
}


# --------------------------------------------------------------------------- loading


def load_raw(kind: str) -> dict:
    return yaml.safe_load(CONFIG_FILES[kind].read_text())


def prepare(raw: dict) -> dict:
    """What `ray up` does to the file before anything else: fill defaults, validate schema."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module", params=sorted(CONFIG_FILES))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def raw(kind) -> dict:
    return load_raw(kind)


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return prepare(raw)


def _cmds_with(cmds: list[str], needle: str) -> list[str]:
    return [c for c in cmds if needle in c]


def _ray_start(cmds: list[str]) -> str:
    starts = _cmds_with(cmds, "ray start")
    assert len(starts) == 1, f"expected one `ray start` command, got {starts}"
    return starts[0]


def _flag(cmd: str, flag: str) -> str | None:
    m = re.search(rf"{re.escape(flag)}[= ](\S+)", cmd)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- checks


def head_trial_problems(kind: str, prepared: dict) -> list[str]:
    """The head must advertise no CPU and no GPU, so Tune never places a trial there."""
    problems = []
    if kind == "aws":
        head_type = prepared["available_node_types"][prepared["head_node_type"]]
        res = head_type["resources"]
        if res.get("CPU") != 0:
            problems.append(f"head resources must set CPU: 0, got {res}")
        if res.get("GPU", 0) != 0:
            problems.append(f"head must not advertise GPUs, got {res}")
        if head_type.get("max_workers", 0) != 0:
            problems.append("head node type must have max_workers 0")
    else:
        start = _ray_start(prepared["head_start_ray_commands"])
        for flag in ("--num-cpus", "--num-gpus"):
            if _flag(start, flag) != "0":
                problems.append(f"head `ray start` needs {flag}=0: {start}")
    return problems


def gpu_worker_problems(kind: str, prepared: dict) -> list[str]:
    """Every worker declares at least one GPU (and, on AWS, exactly what the instance has)."""
    problems = []
    if kind == "aws":
        workers = {
            name: t for name, t in prepared["available_node_types"].items() if name != prepared["head_node_type"]
        }
        if not workers:
            problems.append("no worker node types")
        for name, t in workers.items():
            res = t["resources"]
            if res.get("GPU", 0) < 1 or res.get("CPU", 0) < 1:
                problems.append(f"{name}: resources must declare CPU and GPU, got {res}")
            if not 0 <= t["min_workers"] <= t["max_workers"] <= prepared["max_workers"]:
                problems.append(f"{name}: need 0 <= min_workers <= max_workers <= global max_workers")
            if t["max_workers"] < 1:
                problems.append(f"{name}: max_workers must allow at least one GPU node")
            itype = t["node_config"].get("InstanceType", "")
            if itype not in AWS_GPU_INSTANCES:
                problems.append(f"{name}: {itype!r} is not a known GPU instance type")
            elif (res.get("CPU"), res.get("GPU")) != AWS_GPU_INSTANCES[itype]:
                problems.append(f"{name}: {itype} has (CPU, GPU) {AWS_GPU_INSTANCES[itype]}, resources say {res}")
    else:
        start = _ray_start(prepared["worker_start_ray_commands"])
        gpus = _flag(start, "--num-gpus")
        if gpus is None or gpus == "0":
            problems.append(f"worker `ray start` must declare --num-gpus: {start}")
    return problems


def auth_mode_problems(prepared: dict) -> list[str]:
    """RAY_AUTH_MODE identical for head `ray start`, worker `ray start` and driver shells."""
    problems = []
    modes = {}
    for section in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = _ray_start(prepared[section])
        before = start[: start.index("ray start")]
        found = re.findall(r"\bRAY_AUTH_MODE=([A-Za-z]+)", before)
        if not found:
            problems.append(f"{section}: RAY_AUTH_MODE is not set for `ray start`")
        modes[section] = found[-1] if found else None
    # Drivers (`ray exec ... python -m orchestrator.search --address auto`) get it from ~/.bashrc.
    exported = [
        m
        for c in prepared["setup_commands"]
        for m in re.findall(r"export RAY_AUTH_MODE=([A-Za-z]+)'?\s*>>\s*~/\.bashrc", c)
    ]
    if len(exported) != 1:
        problems.append(f"setup_commands must export RAY_AUTH_MODE into ~/.bashrc once, found {exported}")
    modes["driver shells (~/.bashrc)"] = exported[0] if exported else None
    if len(set(modes.values())) != 1:
        problems.append(f"RAY_AUTH_MODE differs: {modes}")
    if any(m not in ("token", "disabled") for m in modes.values()):
        problems.append(f"unknown RAY_AUTH_MODE value: {modes}")
    if "token" in modes.values() and TOKEN_MOUNT not in prepared["file_mounts"]:
        problems.append(f"token mode needs the same token on every node: file_mounts must carry {TOKEN_MOUNT}")
    return problems


_SECRET_PATTERNS = {
    "literal WANDB_API_KEY value": r"WANDB_API_KEY\s*[=:]\s*[\"']?(?![\"'$])[^\s\"';]{8,}",
    "literal key given to wandb login": r"wandb\s+login\s+(?:--\S+\s+)*[\"']?[A-Za-z0-9_]{20,}",
    "40/64-hex token (W&B key / Ray token shape)": r"(?<![0-9a-fA-F])[0-9a-f]{40}(?:[0-9a-f]{24})?(?![0-9a-fA-F])",
    "literal RAY_AUTH_TOKEN value": r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?(?![\"'$])\S{8,}",
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key setting": r"(?i)aws_secret_access_key\s*[=:]",
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
}


def secret_findings(text: str) -> list[str]:
    """Literal credentials anywhere in the file, comments included."""
    findings = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for what, pattern in _SECRET_PATTERNS.items():
            if re.search(pattern, line):
                findings.append(f"line {lineno}: {what}: {line.strip()[:80]}")
    return findings


def exposure_problems(prepared: dict) -> list[str]:
    """Nothing reachable from the whole internet but SSH; dashboard only on localhost."""
    problems = []
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        ssh_only = rule.get("FromPort") == 22 and rule.get("ToPort") == 22 and rule.get("IpProtocol") == "tcp"
        if world and not ssh_only:
            problems.append(f"security group rule open to the world: {rule}")
    docker = prepared.get("docker") or {}
    options = [o for key in ("run_options", "head_run_options", "worker_run_options") for o in docker.get(key, [])]
    for opt in options:
        if re.match(r"(-p|--publish)\b", opt.strip()):
            problems.append(f"docker publishes a port: {opt}")
    head_start = _ray_start(prepared["head_start_ray_commands"])
    host = _flag(head_start, "--dashboard-host")
    if host not in ("127.0.0.1", "localhost"):
        problems.append(f"dashboard must bind to 127.0.0.1 (reach it via `ray dashboard`), got {host!r}")
    return problems


def install_problems(prepared: dict) -> list[str]:
    """Head and workers install the pinned torch first, then the synced project, editable."""
    problems = []
    for section in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in
        cmds = prepared[section]
        torch_at = [i for i, c in enumerate(cmds) if re.search(r"\bpip install\b.*[\"']?torch==", c)]
        project_at = [
            i for i, c in enumerate(cmds) if re.search(rf"\bpip install\b.*\s-e\s+{re.escape(PROJECT_MOUNT)}(\s|$)", c)
        ]
        if not project_at:
            problems.append(f"{section}: no `pip install -e {PROJECT_MOUNT}`")
        if not torch_at:
            problems.append(f"{section}: torch is not pinned")
        if torch_at and project_at and torch_at[0] > project_at[0]:
            problems.append(f"{section}: torch pin must be installed before the project")
        pins = " ".join(cmds[i] for i in torch_at)
        for pkg, version in (("torch", TORCH_PIN), ("torchvision", TORCHVISION_PIN)):
            if not re.search(rf"[\"']?{pkg}=={re.escape(version)}[\"']?(\s|$)", pins):
                problems.append(f"{section}: expected {pkg}=={version}")
    local = prepared["file_mounts"].get(PROJECT_MOUNT)
    if local is None:
        problems.append(f"file_mounts must sync the project to {PROJECT_MOUNT}")
    elif (ROOT / Path(local).expanduser()).resolve() != ROOT:
        problems.append(f"{PROJECT_MOUNT} must come from the repository root, got {local!r}")
    excludes = prepared.get("rsync_exclude") or []
    for heavy in (".venv", "runs", "experiments"):
        if not any(fnmatch.fnmatch(heavy, pat.removeprefix("/")) for pat in excludes):
            problems.append(f"rsync_exclude must keep {heavy}/ off the cluster")
    return problems


# --------------------------------------------------------------------------- tests


def test_validates_with_installed_ray(kind, raw):
    prepared = prepare(raw)  # raises on any schema / consistency error
    assert prepared["provider"]["type"] == {"aws": "aws", "onprem": "local"}[kind]
    assert prepared["cluster_name"].startswith("pix2pix-tune")


def test_validation_is_live():
    """The same calls reject a broken file, so passing above means something."""
    bad = load_raw("aws")
    bad["head_start_ray_command"] = ["ray start --head"]  # typo: unknown top-level key
    with pytest.raises(jsonschema.ValidationError):
        prepare(bad)
    bad = load_raw("aws")
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # schema wants integers
    with pytest.raises(jsonschema.ValidationError):
        prepare(bad)
    bad = load_raw("onprem")
    bad["available_node_types"] = {"x": {"resources": {}, "node_config": {}}}  # local provider rejects it
    with pytest.raises(click.ClickException):
        prepare(bad)


def test_head_runs_no_trials(kind, prepared):
    assert head_trial_problems(kind, prepared) == []


def test_gpu_workers_declare_gpus(kind, prepared):
    assert gpu_worker_problems(kind, prepared) == []


def test_workers_check_cuda_at_setup(kind, prepared):
    own = prepared["worker_setup_commands"][len(prepared["setup_commands"]) :]
    assert any("torch.cuda.is_available()" in c and "assert" in c for c in own), own


def test_setup_installs_pinned_project(prepared):
    assert install_problems(prepared) == []


def test_pins_admitted_by_pyproject_and_ray_matches(kind, prepared):
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pkg, version in (("torch", TORCH_PIN), ("torchvision", TORCHVISION_PIN)):
        spec = re.search(rf'"{pkg}([<>=!~][^"]*)"', pyproject)
        assert spec, f"{pkg} not in pyproject dependencies"
        assert version in SpecifierSet(spec.group(1)), f"{pkg}=={version} not admitted by {spec.group(1)}"
    # Every node runs the Ray version this project is developed and tested with.
    text = CONFIG_FILES[kind].read_text()
    if kind == "aws":
        images = [prepared["docker"]["image"], prepared["docker"]["head_image"]]
        assert all(img.startswith(f"rayproject/ray:{ray.__version__}-") for img in images), images
    else:
        assert re.search(rf"ray\[[a-z,]*\]=={re.escape(ray.__version__)}", text)


def test_aws_head_can_launch_workers():
    prepared = prepare(load_raw("aws"))
    assert any("boto3" in c for c in prepared["head_setup_commands"]), "autoscaler on the head needs boto3"
    for name, t in prepared["available_node_types"].items():
        assert t["node_config"].get("IamInstanceProfile"), f"{name}: needs an instance profile (S3 access)"


def test_auth_mode_consistent(prepared):
    assert auth_mode_problems(prepared) == []
    assert "RAY_AUTH_MODE=token" in _ray_start(prepared["head_start_ray_commands"])


def test_no_literal_secrets(kind):
    assert secret_findings(CONFIG_FILES[kind].read_text()) == []


def test_nothing_exposed_but_ssh(prepared):
    assert exposure_problems(prepared) == []


def test_storage_paths(kind, raw):
    meta = raw["metadata"]
    if kind == "aws":
        assert meta["storage_path"].startswith("s3://"), meta
    else:
        # Local paths must be absolute (Tune) and on the share the setup checks on every node.
        checked = re.search(r"test -w (\S+)", raw["setup_commands"][0]).group(1)
        for key in ("storage_path", "data_path"):
            assert Path(meta[key]).is_absolute()
            assert Path(meta[key]).is_relative_to(checked), (meta[key], checked)


@pytest.mark.parametrize(
    ("kind_", "keys"),
    [
        ("aws", ["cluster_name:", "region:", "ImageId: &ami", "Name: pix2pix-tune-head", "storage_path:"]),
        ("onprem", ["cluster_name:", "head_ip:", "worker_ips:", "ssh_user:", "ssh_private_key:", "storage_path:"]),
    ],
)
def test_user_edited_lines_are_marked(kind_, keys):
    lines = CONFIG_FILES[kind_].read_text().splitlines()
    for key in keys:
        hits = [ln for ln in lines if ln.lstrip().startswith(key)]
        assert hits, f"{key!r} not found"
        assert all("# EDIT" in ln for ln in hits), hits


# ----------------------------------------------------------- each check can fail


def test_checks_catch_broken_configs():
    aws, onprem = prepare(load_raw("aws")), prepare(load_raw("onprem"))

    bad = copy.deepcopy(aws)
    bad["available_node_types"]["head"]["resources"] = {"CPU": 4}
    assert head_trial_problems("aws", bad)
    bad = copy.deepcopy(onprem)
    bad["head_start_ray_commands"] = [c.replace(" --num-cpus=0", "") for c in bad["head_start_ray_commands"]]
    assert head_trial_problems("onprem", bad)

    bad = copy.deepcopy(aws)
    bad["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 4}
    assert gpu_worker_problems("aws", bad)
    bad = copy.deepcopy(aws)
    bad["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 8, "GPU": 1}  # g5.xlarge has 4 vCPUs
    assert gpu_worker_problems("aws", bad)
    bad = copy.deepcopy(onprem)
    bad["worker_start_ray_commands"] = [re.sub(r" --num-gpus=\S+", "", c) for c in bad["worker_start_ray_commands"]]
    assert gpu_worker_problems("onprem", bad)

    for cfg in (aws, onprem):
        bad = copy.deepcopy(cfg)
        bad["worker_start_ray_commands"] = [
            c.replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled") for c in bad["worker_start_ray_commands"]
        ]
        assert any("differs" in p for p in auth_mode_problems(bad))
        bad = copy.deepcopy(cfg)
        bad["head_start_ray_commands"] = [
            c.replace("export RAY_AUTH_MODE=token", "export") for c in bad["head_start_ray_commands"]
        ]
        assert any("not set" in p for p in auth_mode_problems(bad))
        bad = copy.deepcopy(cfg)
        del bad["file_mounts"][TOKEN_MOUNT]
        assert auth_mode_problems(bad)

        bad = copy.deepcopy(cfg)
        bad["head_setup_commands"] = [c for c in bad["head_setup_commands"] if " -e " not in c]
        assert install_problems(bad)
        bad = copy.deepcopy(cfg)
        bad["worker_setup_commands"] = [c.replace("torch==2.14.1", "torch") for c in bad["worker_setup_commands"]]
        assert install_problems(bad)
        bad = copy.deepcopy(cfg)
        bad["rsync_exclude"] = []
        assert install_problems(bad)

        bad = copy.deepcopy(cfg)
        bad["head_start_ray_commands"] = [
            c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for c in bad["head_start_ray_commands"]
        ]
        assert exposure_problems(bad)

    world = {"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    bad = copy.deepcopy(aws)
    bad["provider"]["security_group"] = {"IpPermissions": [{**world, "FromPort": 22, "ToPort": 22}]}
    assert exposure_problems(bad) == []  # SSH from anywhere is Ray's default and allowed
    bad["provider"]["security_group"]["IpPermissions"].append({**world, "FromPort": 8265, "ToPort": 8265})
    assert exposure_problems(bad)
    bad = copy.deepcopy(aws)
    bad["docker"]["head_run_options"] = ["-p 8265:8265"]
    assert exposure_problems(bad)

    assert secret_findings("  - export WANDB_API_KEY=3f1c0a9e8b7d6c5b4a39281706f5e4d3c2b1a098\n")
    assert secret_findings('  - echo "export WANDB_API_KEY=local-abcdefgh12345" >> ~/.bashrc\n')
    assert secret_findings("  - wandb login 0123456789abcdef0123456789abcdef01234567\n")
    assert secret_findings("  - export RAY_AUTH_TOKEN=d2f1e0c9b8a7\n")
    assert secret_findings("# aws_access_key_id = AKIAABCDEFGHIJKLMNOP\n")
    assert secret_findings("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    # The indirections the files do use are not secrets.
    assert secret_findings('export WANDB_API_KEY="$(cat ~/.config/pix2pix-tune/wandb_api_key)"\n') == []
    assert secret_findings("export WANDB_API_KEY=$WANDB_API_KEY\n") == []


# ---------------------------------------------------------------------------------------------
# the documented cluster commands (the README's and docs/cluster.md's)


def readme_job_submissions() -> list[str]:
    """Every `ray job submit ...` command in the docs' bash blocks, continuation lines joined."""
    text = "\n".join((ROOT / page).read_text() for page in ("README.md", "docs/cluster.md"))
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.strip().startswith("ray job submit")]


def test_readme_job_submissions_parse_for_ray_and_for_the_search() -> None:
    """Ray's own `ray job submit` parser takes each documented command, and the entrypoint it would run
    (Ray shell-quotes each word) is a bash script whose search command our CLI accepts flag by flag."""
    from ray.dashboard.modules.job.cli import submit

    from orchestrator.search import parse_args

    commands = readme_job_submissions()
    assert len(commands) >= 3 and any("--resume" in c for c in commands)
    for command in commands:
        words = shlex.split(command)[3:]  # after `ray job submit`
        context = submit.make_context("submit", words)
        entrypoint = shlex.join(context.params["entrypoint"])  # what Ray sends to its job server
        bash, dash_c, script = shlex.split(entrypoint)
        assert (bash, dash_c) == ("bash", "-c")
        cd, home, and_, python, dash_m, module, *flags = shlex.split(script)
        assert (cd, home, and_, python, dash_m, module) == (
            "cd",
            "~/pix2pix-tune",
            "&&",
            "python",
            "-m",
            "orchestrator.search",
        )
        args = parse_args(flags)  # argparse exits on any unknown flag or bad value
        assert args.address == "auto" and args.name == "facades-256"
