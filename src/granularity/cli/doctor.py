"""``granularity doctor``: what this machine has and lacks, each missing piece with its fix.

Exit code 0 when every required piece is there (the default routes), 1 otherwise, so scripts
can gate on it; ``--json`` prints the same checks as a JSON list.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from granularity.utils.doctor import PARTS, exit_code, run_checks

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
