"""One-time rewrite of this report (made before the one vocabulary) in today's spelling: the key
`transfer.target_level` as `transfer.target`, every run id and config hash recomputed from today's
spelling (granularity.sweeps.migrate.current, sweeps.spec.run_id, theory.experiment.config_hash),
the figure files named by the new ids. Nothing else changes (checked: no other byte differs
outside the ids and the key). Run from the repository root: python docs/results/phase-k-sigma/migrate_ids.py"""

import html
import json
import re
from pathlib import Path

from granularity.sweeps.migrate import current
from granularity.sweeps.spec import load_sweep, run_id
from granularity.theory.config import SimConfig
from granularity.theory.experiment import config_hash

HERE = Path(__file__).parent
page = (HERE / "index.html").read_text()
ids: dict[str, str] = {}


def walk(node):
    if isinstance(node, dict):
        if "run_id" in node and "config" in node:
            ids[node["run_id"]] = run_id("simulate", current(node["config"]))
        if "config_hash" in node and "config" in node:
            ids[node["config_hash"]] = config_hash(SimConfig.build(current(node["config"])))
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)


for block in re.findall(r"<pre>(.*?)</pre>", page, flags=re.S):
    try:
        walk(json.loads(html.unescape(block)))
    except json.JSONDecodeError:
        pass  # not a JSON block
sweep = load_sweep(HERE / "sweep.yaml")
assert {r.run_id for r in sweep.runs} <= set(ids.values()), "the new ids are not those of sweep.yaml's runs"
page = page.replace("&quot;target_level&quot;", "&quot;target&quot;")
for old, new in ids.items():
    page = page.replace(old, new)
    for png in HERE.glob(f"figures/{old}_*.png"):
        png.rename(png.with_name(new + png.name[len(old):]))
(HERE / "index.html").write_text(page)
print(f"{len(ids)} ids rewritten")
