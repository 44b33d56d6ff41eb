"""``python -m granularity.bench.rss KIND JSON``: run one workload in this fresh process and print
one JSON line with its result and this process's peak resident set size (``maxrss_mib``)."""

from __future__ import annotations

import json
import resource
import sys


def _maxrss_mib() -> float:
    """Peak RSS of this process. Linux folds the *parent's* high-water mark into ``ru_maxrss``
    across fork + exec (a child of a 600 MiB parent reports at least 600 MiB), so the kernel's
    per-address-space ``VmHWM`` is read first; ``getrusage`` is the fallback elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main(argv: list[str]) -> None:
    kind, args = argv[0], json.loads(argv[1])
    import torch  # noqa: F401 - counted in the baseline

    base = _maxrss_mib()
    if kind == "generator_eval":
        from granularity.bench.simulator import generator_eval

        res = generator_eval(**args)
    elif kind == "engine_run":
        from granularity.bench.engine import engine_run

        res = engine_run(**args)
    elif kind == "fused_group":
        from granularity.bench.fused import fused_group

        res = fused_group(**args)
    elif kind == "idle":
        res = {}
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps({**res, "maxrss_mib": _maxrss_mib(), "maxrss_after_import_mib": base}))


if __name__ == "__main__":
    main(sys.argv[1:])
