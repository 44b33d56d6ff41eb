"""``python -m granularity.bench.fused study``: bad arguments are one usage line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args, match", [
    (["study", "--repeats", "x"], "argument --repeats: invalid int value: 'x'"),
    (["study", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["study", "nope"], "Unknown design 'nope'; valid designs are: bridge"),
    (["time"], "argument what: invalid choice: 'time'"),
])
def test_bad_arguments_are_one_usage_error(args, match):
    proc = subprocess.run([sys.executable, "-m", "granularity.bench.fused", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert match in proc.stderr.strip().splitlines()[-1]
