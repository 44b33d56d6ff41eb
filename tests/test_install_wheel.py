"""The wheel works outside the checkout: `pip install .` (not editable) into a fresh venv, then
commands from another folder, resources (the shipped class lists) included.

The venv sees the site-packages of the environment running the test only so that torch and the
other dependencies need not be installed again; the test checks that ``granularity`` itself is
imported from the venv's wheel install, not from a checkout or an editable install.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args, cwd, env, timeout=600):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["OMP_NUM_THREADS"] = "1"  # the commands share the test's cores
    # --no-build-isolation: the build backend (setuptools, wheel) comes from this environment,
    # so no index is needed
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp / "dist", ROOT], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("granularity-*.whl")
    venv.create(tmp / "venv", with_pip=False, symlinks=True)
    py = tmp / "venv" / "bin" / "python"
    # the dependencies (torch, ...) from the environment running the test, as plain path entries
    # after the venv's own site-packages (so the wheel wins; their .pth files, e.g. an editable
    # granularity, are not processed). Not --system-site-packages: when the test itself runs in
    # a venv that would give the base interpreter's packages, not this environment's.
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    (Path(purelib.strip()) / "_test_env_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--ignore-installed", wheel],
         cwd=tmp, env=env)
    work = tmp / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "py": py, "bin": tmp / "venv" / "bin", "work": work, "env": env}


def test_wheel_holds_the_resources(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for f in ("imagenet1k.txt", "cifar100.txt", "cifar100_names.txt", "NOTICE"):
        assert f"granularity/resources/wnids/{f}" in names
    assert not any(n.startswith("tests/") for n in names)


def test_commands_from_another_folder(installed, tmp_path):
    env, work = dict(installed["env"]), installed["work"]
    where = _run([installed["py"], "-c", "import granularity; print(granularity.__file__)"], work, env)
    assert where.strip().startswith(str(installed["bin"].parent)), where  # the wheel, not a checkout
    exe = installed["bin"] / "granularity"
    out = _run([exe, "simulate", "--preset", "quick", "--seeds", "1", "--set", "train.steps=20",
                "--set", "transfer.n_test=200", "--set", "transfer.finetune_steps=10",
                "--set", "transfer.probe_steps=10", "--quiet", "--out", tmp_path / "quick"], work, env)
    assert (tmp_path / "quick").is_dir() and out
    doc = json.loads(subprocess.run([exe, "doctor", "--json"], cwd=work, env=env,
                                    capture_output=True, text=True, timeout=600).stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["run folder"]["found"] == f"{work / 'runs'} is writable"
    if not checks["wordnet"]["ok"]:
        pytest.skip(f"WordNet 3.0 not here; {checks['wordnet']['fix']}")
    env["GRANULARITY_CACHE"] = str(tmp_path / "cache")
    out = _run([exe, "hierarchy", "levels", "cifar100-wordnet"], work, env)
    assert "100" in out  # the leaf level: the 100 classes of the shipped class list
