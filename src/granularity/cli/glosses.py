"""``granularity study --dataset wordnet-glosses``: the WordNet-gloss granularity study.

Reached through a small dispatch at the top of the ``study`` command (``cli/transfer.py``),
which hands over its parsed options; the study itself is
:mod:`granularity.experiments.glosses`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

UNSUPPORTED = ("protocol",)  # study options that do not apply here (the transfer is fine-tuning)


def glosses_study(*, seeds: list[int] | None = None, quick=False, full=False, config=None, sets=(), data_root=None, model=None, epochs=None,
                  transfer_epochs=None, train_size=None, device=None, out=None, quiet=False, dry_run=False,
                  **other: Any) -> None:
    """Run the study from the ``study`` command's options (see ``granularity study --help``)."""
    from granularity.cli.transfer import _nested
    from granularity.experiments.glosses import QUICK, GlossStudyConfig, check_sparse, run_glosses_study, study_jobs
    from granularity.utils.config import apply_overrides, deep_merge, load_config_file
    from granularity.utils.stats import fmt_ci

    given = [k for k in UNSUPPORTED if other.get(k) is not None]
    if given:
        raise click.UsageError(f"--{given[0]} does not apply to the wordnet-glosses study (its transfer is fine-tuning).")
    if data_root is not None:
        raise click.UsageError("--data-root does not apply to wordnet-glosses; set GRANULARITY_WORDNET_DIR to the WordNet 3.0 folder.")
    if quick and full:
        raise click.UsageError("--quick and --full cannot be used together.")
    base: dict = deep_merge({}, QUICK) if quick else {}
    if full:
        base["train_size"] = None
    flags = deep_merge(base, _nested(seeds=seeds, train_size=train_size, device=device,
                                     **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs}))
    # defaults < file < flags < --set, merged key by key (--epochs keeps the default optimiser)
    raw = deep_merge(GlossStudyConfig().to_dict(), load_config_file(config) if config is not None else {})
    cfg = GlossStudyConfig.build(apply_overrides(deep_merge(raw, flags), sets))
    check_sparse(cfg)
    if dry_run:
        import json

        from granularity.data.wordnet_glosses import load_wordnet_glosses

        arms, jobs = study_jobs(cfg, load_wordnet_glosses(**cfg.data.model_dump()))
        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        click.echo(f"{len(jobs)} runs ({len(arms)} arms x {len(cfg.seeds)} seeds): {', '.join(a for a, _ in arms)}")
        return
    out = out or Path("runs/study") / ("wordnet-glosses" + ("-quick" if quick else "-full" if full else ""))
    t0 = time.time()
    res = run_glosses_study(cfg, out, progress=not quiet, command="granularity " + " ".join(sys.argv[1:]))
    click.echo(f"{'arm':<22} {'classes':>7}  {'target error':<16} {'minus baseline':<16}")
    for r in res["table"]:
        diff = fmt_ci(r["target_error_minus_baseline"]) if "target_error_minus_baseline" in r else "-"
        click.echo(f"{r['arm']:<22} {r['num_source_classes']:>7}  {fmt_ci(r['target_error']):<16} {diff:<16}")
    click.echo(f"{time.time() - t0:.0f} s; results in {out}/results.json, figure {', '.join(res['figures'])}")
