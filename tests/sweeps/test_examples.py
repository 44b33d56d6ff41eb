"""The sweep files shipped in examples/ stay valid (every expanded run validates)."""

from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_sweep_validates(cli, tmp_path, path):
    code, out, err = cli("sweep", path, "--dry-run", "--out", tmp_path / "store")
    assert code == 0, err
    assert "27 runs" in out or "27 runs" in err


def test_examples_exist():
    assert len(EXAMPLES) >= 2
