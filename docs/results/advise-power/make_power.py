"""How many runs the advisor's race saves, and how often it finds a truly better candidate:
simulated races driven by the real ``replay`` and ``decide`` (granularity.experiments.advise_race)
with the default settings (3 seeds, +2 per round, up to 10; alpha 0.05; 5 fresh confirmation
seeds at one-sided 0.025) and as many candidates as the default list on Fashion-MNIST: the
target labels and 4 contenders. One contender ("better") is truly better than the target by
``delta`` points of error; the others equal the target. A run's validation and test errors share
the seed's effect (pairing) and the trained model's luck, plus independent split noise; ``sd`` is
the standard deviation of the paired difference of two candidates' errors on one seed, in points
(0.5 is about what the committed plain Fashion-MNIST advice measured on the test split: a 95%
half-width of 0.33 points over 10 seeds; 1.5 a noisier setting). 1,000 races per row.

    python docs/results/advise-power/make_power.py        # writes power.json and README.md here
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from granularity.experiments.advise import AdviseConfig
from granularity.experiments.advise_race import BASELINE, decide, replay

HERE = Path(__file__).resolve().parent
RACES, DELTAS, SDS, CONTENDERS = 1000, (0.0, 1.0, 2.0, 5.0), (0.5, 1.5), 4


def one_setting(rule: str, delta: float, sd: float, seed: int) -> dict[str, float]:
    """Rates and mean run counts over :data:`RACES` races of one (rule, delta, sd)."""
    cfg = AdviseConfig(drop_rule=rule)
    cands = [BASELINE, "better", *[f"equal{i}" for i in range(CONTENDERS - 1)]]
    seeds = cfg.max_seeds + cfg.confirm_seeds
    rng = np.random.default_rng(seed)
    unit = sd / math.sqrt(2) / 100  # per-run noise (errors as fractions): the paired difference has sd points
    base = rng.normal(0, 0.02, (RACES, 1, seeds)) + 0.2 + rng.normal(0, unit * 0.8, (RACES, len(cands), seeds))
    val = base + rng.normal(0, unit * 0.6, base.shape)
    test = base + rng.normal(0, unit * 0.6, base.shape)
    val[:, 1] -= delta / 100
    test[:, 1] -= delta / 100
    keys = [(c, s) for c in cands for s in range(seeds)]
    runs = picked = recommended = wrong = cobest_dropped = better_dropped = 0
    for r in range(RACES):
        race = replay(cfg, cands, dict(zip(keys, val[r].ravel().tolist())))
        dec = decide(cfg, race, dict(zip(keys, test[r].ravel().tolist())))
        n_conf = 2 * cfg.confirm_seeds if race.best != BASELINE else 0
        runs += sum(len(v) for v in race.seeds.values()) + n_conf
        picked += race.best == "better"
        recommended += dec["recommendation"] == "better"
        wrong += dec["recommendation"] not in (BASELINE, "better")
        better_dropped += "better" in race.eliminated
        cobest_dropped += any(c in race.eliminated for c in cands[2:]) if delta == 0 else False
    full = len(cands) * cfg.max_seeds + 2 * cfg.confirm_seeds  # every candidate to 10 seeds, then the confirmation
    return {"rule": rule, "delta_points": delta, "sd_points": sd, "races": RACES,
            "mean_runs": runs / RACES, "runs_without_racing": full, "runs_saved": full - runs / RACES,
            "p_leader_is_better": picked / RACES, "p_recommended_better": recommended / RACES,
            "p_recommended_other": wrong / RACES, "p_better_dropped": better_dropped / RACES}


def table(rows: list[dict[str, float]]) -> list[str]:
    out = ["| rule | paired sd (points) | better by (points) | runs (mean, confirmation included) | saved vs no racing (60) | "
           "leader = the better one | recommended the better one | recommended another | the better one dropped |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['rule']} | {r['sd_points']:g} | {r['delta_points']:g} | {r['mean_runs']:.1f} | {r['runs_saved']:.1f} | "
                   f"{r['p_leader_is_better']:.3f} | {r['p_recommended_better']:.3f} | {r['p_recommended_other']:.3f} | "
                   f"{r['p_better_dropped']:.3f} |")
    return out


def main() -> None:
    rows = [one_setting(rule, d, sd, seed=1000 * i + j)
            for rule in ("holm-spending", "unadjusted") for i, sd in enumerate(SDS) for j, d in enumerate(DELTAS)]
    (HERE / "power.json").write_text(json.dumps({"command": "python docs/results/advise-power/make_power.py",
                                                 "contenders": CONTENDERS, "rows": rows}, indent=2) + "\n")
    doc = (__doc__ or "").strip().split("\n\n")
    (HERE / "README.md").write_text("\n".join([
        "# The advisor's race: runs saved and power (simulation)", "", doc[0].replace("\n", " "), "",
        "Command (numpy only, about a minute on one core):", "", "```bash", doc[-1].strip(), "```", "",
        "With 0 points every candidate is equal: a recommendation of `better` there is a false one (at most "
        "0.025 by the confirmation's level). 'Runs saved' is against giving all 5 candidates 10 seeds and then "
        "the confirmation (60 runs). Rows from `power.json`:", "", *table(rows), ""]))


if __name__ == "__main__":
    sys.exit(main())
