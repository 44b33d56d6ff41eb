"""Line counts per folder and the longest functions of the package, at any git revision.

Usage::

    python scripts/code_stats.py                 # the working tree
    python scripts/code_stats.py --rev aeca12c   # a commit, read through `git show`
    python scripts/code_stats.py --rev A --rev B --rev WORKTREE   # side by side

Lines are physical lines of the ``.py`` files (blank lines and comments included), so the
figures can be checked with ``wc -l``. A function's length is ``end_lineno - lineno + 1`` of
its ``def`` (decorators excluded), nested functions counted inside their parent and on their
own; this is the measure ``tests/test_function_length.py`` holds to.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
LIMIT = 80  # the house rule: a function a reader can hold


def _files(rev: str) -> dict[str, str]:
    """Path -> source of every tracked ``.py`` file under src/ and tests/ at ``rev``."""
    if rev == WORKTREE:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "src", "tests"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()
        return {p: (ROOT / p).read_text() for p in out if p.endswith(".py") and (ROOT / p).exists()}
    out = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", "src", "tests"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return {
        p: subprocess.run(["git", "show", f"{rev}:{p}"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
        for p in out if p.endswith(".py")
    }


def folder_of(path: str) -> str:
    """``src/granularity/engine/run.py`` -> ``src/granularity/engine``; top-level modules
    of the package count as ``src/granularity/(top)``; tests/ is one folder."""
    parts = path.split("/")
    if parts[0] == "tests":
        return "tests"
    if len(parts) > 3:
        return "/".join(parts[:3])
    return "src/granularity/(top)"


def long_functions(source: str, limit: int = LIMIT) -> list[tuple[int, str, int]]:
    """``(length, qualified name, first line)`` of every function over ``limit`` lines."""
    tree = ast.parse(source)
    found: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                name = f"{prefix}{child.name}"
                if length > limit:
                    found.append((length, name, child.lineno))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def stats(rev: str) -> dict:
    files = _files(rev)
    lines: dict[str, int] = defaultdict(int)
    functions: list[tuple[int, str]] = []
    for path, source in files.items():
        lines[folder_of(path)] += len(source.splitlines())
        if path.startswith("src/"):
            functions += [(n, f"{path}::{name}") for n, name, _ in long_functions(source, 0)]
    functions.sort(reverse=True)
    return {
        "lines": dict(lines),
        "over_limit": sum(1 for n, _ in functions if n > LIMIT),
        "longest": functions[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help=f"git revision or {WORKTREE} (repeatable)")
    revs = parser.parse_args().rev or [WORKTREE]
    results = {rev: stats(rev) for rev in revs}
    folders = sorted({f for r in results.values() for f in r["lines"]})
    print("| folder | " + " | ".join(revs) + " |")
    print("|---|" + "---:|" * len(revs))
    for folder in folders:
        print(f"| {folder} | " + " | ".join(str(r["lines"].get(folder, 0)) for r in results.values()) + " |")
    src_total = [sum(v for k, v in r["lines"].items() if k.startswith("src/")) for r in results.values()]
    print("| **src total** | " + " | ".join(map(str, src_total)) + " |")
    print(f"| functions in src/ > {LIMIT} lines | "
          + " | ".join(str(r["over_limit"]) for r in results.values()) + " |")
    for rev, r in results.items():
        print(f"\nLongest functions in src/ at {rev}:")
        for n, name in r["longest"]:
            print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
