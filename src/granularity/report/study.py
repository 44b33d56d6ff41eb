"""The report's summaries of real-data results: a study folder (U-curve, easy vs hard samples,
rare subclasses, from its ``results.json``) and a single transfer run folder (its result table)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from granularity.utils.html import Figure, Names, Section
from granularity.utils.io import read_json
from granularity.utils.stats import fmt_ci


def section_transfer_run(folder: Path) -> Section:
    res = read_json(folder / "result.json")
    sec = Section(f"Transfer run {folder.name!r}", str(folder))
    keys = ["source", "num_source_classes", "target_level", "protocol", "target_error", "rare_error",
            "common_error", "hierarchy_hash", "seed"]
    sec.tables.append(("Result", [["field", "value"]] + [[k, str(res[k])] for k in keys if k in res]))
    return sec


def section_study(folder: Path, figdir: Path, names: Names) -> Section:
    """The real-data study: U-curve, easy vs hard samples, rare subclasses, from results.json."""
    from granularity.experiments.study import arm_run_folder
    from granularity.report.figures import plot_grouped_bars, plot_lines

    res = read_json(folder / "results.json")
    cfg = res.get("config") or read_json(folder / "study.json")
    table = res["table"]
    seeds = cfg.get("seeds", [])
    run = cfg.get("run", cfg)  # study.json files of before the study held a transfer config: the keys at the top
    sec = Section(f"Real-data study {folder.name!r} ({run.get('dataset')}, target level {run.get('target')})", str(folder))
    hs = res.get("hard_samples", {})
    sec.notes.append(f"{len(table)} arms x {len(seeds)} seeds {seeds}; hard test samples: {hs.get('n')} "
                     f"({hs.get('rule', '')}); hierarchy hash {res.get('hierarchy_hash')}.")
    runs = {}
    for row in table:
        for seed in seeds:
            p = folder / arm_run_folder(row["arm"], seed) / "config.json"
            if p.exists():
                runs[f"{row['arm']}/seed{seed}"] = read_json(p)
    details = {"study_config": cfg, "seeds": seeds, "hard_samples": hs, "hierarchy_hash": res.get("hierarchy_hash"),
               "run_configs": runs}

    def summ(row: Mapping[str, Any], key: str) -> str:
        return fmt_ci(row[key]) if isinstance(row.get(key), Mapping) and row[key].get("n") else ""

    rows = [["arm", "family", "pretraining classes", "target error", "hard error", "easy error",
             "target error - baseline", "rare error", "common error"]]
    for r in table:
        rows.append([r["arm"], r["family"], str(r["num_source_classes"]), summ(r, "target_error"), summ(r, "hard_error"),
                     summ(r, "easy_error"), summ(r, "target_error_minus_baseline"), summ(r, "rare_error"),
                     summ(r, "common_error")])
    main = [r for r in table if r["family"] != "rare"]
    fams: dict[str, list[Mapping[str, Any]]] = {}
    for r in main:
        fams.setdefault("hierarchy" if r["family"] in ("target", "hierarchy") else r["family"], []).append(r)
    series = {fam: ([r["num_source_classes"] for r in rs], [r["target_error"]["mean"] for r in rs],
                    [r["target_error"]["ci"] for r in rs]) for fam, rs in fams.items()}
    p = plot_lines(series, figdir / names(folder.name, "u_curve"), xlabel="number of pretraining classes",
                   ylabel="target test error", logx=True,
                   title=f"Target error vs pretraining granularity ({len(seeds)} seeds, 95% CI)")
    sec.figures.append(Figure("U-curve: target error against pretraining granularity", p,
                              f"Mean and 95% CI band over {len(seeds)} seeds per arm, one line per label-function family "
                              "(hierarchy levels include the target labels themselves).", details, rows))
    bars = {r["arm"]: {k: (r[f"{k}_error"]["mean"], r[f"{k}_error"]["ci"]) for k in ("easy", "hard")
                       if isinstance(r.get(f"{k}_error"), Mapping)} for r in main}
    p = plot_grouped_bars(bars, figdir / names(folder.name, "easy_hard"), ylabel="target test error",
                          title=f"Easy vs hard test samples ({hs.get('n')} hard), 95% CI")
    sec.figures.append(Figure("Hard samples: target error on easy vs hard test samples", p,
                              f"Hard samples: {hs.get('rule', 'see the study')}; mean and 95% CI over {len(seeds)} seeds.",
                              details))
    rare = [r for r in table if r["family"] == "rare" and isinstance(r.get("rare_error"), Mapping)]
    if rare:
        bars = {r["arm"]: {"other subclasses": (r["common_error"]["mean"], r["common_error"]["ci"]),
                           "rare subclasses": (r["rare_error"]["mean"], r["rare_error"]["ci"])} for r in rare}
        p = plot_grouped_bars(bars, figdir / names(folder.name, "rare"), ylabel="target test error",
                              title="Rare subclasses vs the others (95% CI)")
        sec.figures.append(Figure("Rare subclasses", p, f"Rare classes {cfg.get('rare')}; mean and 95% CI over "
                                  f"{len(seeds)} seeds.", details))
    return sec
