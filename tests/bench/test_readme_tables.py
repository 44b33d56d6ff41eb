"""benchmarks/README.md's tables are generated from the committed JSON: regenerating them must
reproduce the file exactly, so a table cannot drift from its result file."""

import json
from pathlib import Path

from granularity.bench.report import BLOCK, refresh

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "benchmarks" / "README.md"


def test_readme_tables_match_the_committed_json():
    text = README.read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 2
    assert refresh(text, ROOT) == text, "run: python -m granularity.bench.report --readme benchmarks/README.md"


def test_every_committed_benchmark_json_has_its_table():
    shown = {path for _, path, _, _ in BLOCK.findall(README.read_text())}
    for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        if "results" in json.loads(f.read_text()):  # a `granularity bench` record
            assert f"benchmarks/results/{f.name}" in shown, f.name


def test_refresh_rewrites_a_stale_table():
    text = README.read_text()
    first = BLOCK.search(text)
    stale = text[: first.start(3)] + "| stale | table |\n" + text[first.end(3):]
    assert refresh(stale, ROOT) == text
