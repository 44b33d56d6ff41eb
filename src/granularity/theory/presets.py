"""Named simulator experiments. A preset is a set of overrides of the :class:`SimConfig`
defaults (which are the calibrated ``paper`` setting); names are the CLI's vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.theory.config import SimConfig
from granularity.utils.config import apply_overrides, deep_merge, load_config_file


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def raw(self) -> dict[str, Any]:
        """The preset as unvalidated config data: its name and overrides (a fresh copy)."""
        return deep_merge({"name": self.name}, self.overrides)

    def config(self) -> SimConfig:
        return SimConfig.build(self.raw(), where=f"preset {self.name!r}")

    def summary(self) -> str:
        """The description followed by every setting the preset changes, generated from the
        overrides so that it cannot leave one out."""
        settings = ", ".join(f"{key}={_show(value)}" for key, value in _leaves(self.overrides))
        return f"{self.description} [{settings}]" if settings else self.description


def _leaves(tree: dict[str, Any]):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield key, value


def _show(value: Any) -> str:
    """A value as it is written after ``--set key=`` (YAML)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


PRESETS: dict[str, Preset] = {}


def register(name: str, description: str, **overrides: Any) -> Preset:
    preset = Preset(name, description, overrides)
    PRESETS[name] = preset
    return preset


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise unknown_name("preset", name, PRESETS) from None


def resolve_config(preset: str, config: str | Path | None = None, sets: Iterable[str] = (),
                   seeds: int | list[int] | None = None) -> tuple[SimConfig, dict[str, Any]]:
    """defaults < preset < config file < ``key=value`` overrides < ``seeds``, validated once.
    ``seeds``: a count (seeds 0..n-1) or a list of consecutive seeds (``seed0`` = its first).
    Returns the config and the raw data it was built from (for phase cells to vary).

    Examples
    --------
    >>> cfg, _ = resolve_config("quick", sets=["data.k=4"], seeds=2)
    >>> (cfg.data.k, cfg.seeds)
    (4, 2)
    """
    raw = get_preset(preset).raw()
    if config is not None:
        raw = deep_merge(raw, load_config_file(config))
    raw = apply_overrides(raw, sets)
    if isinstance(seeds, list):
        raw.update(seed_range(seeds))
    elif seeds is not None:
        raw["seeds"] = seeds
    return SimConfig.build(raw), raw


def seed_range(seeds: list[int]) -> dict[str, int]:
    """``[3, 4, 5]`` -> ``{"seed0": 3, "seeds": 3}``: the simulator trains consecutive seeds."""
    if not seeds or list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        raise GranularityError(f"The 'seeds' parameter of the simulator must be consecutive seeds (e.g. 3,4,5 or a count). "
                               f"Got {list(seeds)} instead.")
    return {"seed0": int(seeds[0]), "seeds": len(seeds)}


# The calibrated reference (docs/theory.md, "The model in brief"): d=256, P=16, K=2, k=8, m=16,
# SGD lr 0.5, batch 128, 3000 steps on 2000 easy samples. Descriptions say what a preset is
# for; Preset.summary appends the settings it changes.
register("paper", "the paper's setting (K=2 superclasses, k=8, d=256), calibrated defaults")
# Seconds instead of minutes: for demos, smoke tests and phase-diagram drafts.
register(
    "quick",
    "small and fast: the paper's effect in seconds",
    data={"d": 64, "P": 8, "k": 4},
    model={"m": 8},
    train={"n_train": 600, "steps": 600, "batch_size": 64, "log_points": 10},
    transfer={"n_test": 600, "probe_steps": 150, "finetune_steps": 150},
    seeds=3,
    seed_batch=3,
)
register(
    "large",
    "a large setting for benchmarks, with fewer steps than paper",
    data={"d": 1024, "P": 64, "k": 32},
    train={"steps": 1000},
)
register("k4", "few subclasses: fine features more frequent, a smaller gap", data={"k": 4})
register("k16", "many subclasses: fine features rarer, a bigger gap", data={"k": 16})
register("many-superclasses", "more superclasses than the paper's two", data={"K": 4, "k": 6})
register("unequal-k", "unequal subclass counts in the two superclasses", data={"k": [4, 12]})
register("multiview", "two features per node", data={"views_common": 2, "views_fine": 2, "P": 24})
register(
    "deep",
    "a 3-level tree (2 superclasses x 4 x 3), pretrained at every level",
    data={"k": 4, "deeper": [3], "P": 16},
    transfer={"sources": [1, 2, 3]},
)
register(
    "hard-in-train",
    "hard samples in training (the paper's open 'perturbed' case)",
    data={"train_hard_fraction": 0.1},
)
register(
    "long-tail",
    "long-tailed (Zipf) subclass frequencies: rare subclasses",
    data={"tail_exponent": 1.5},
)
register(
    "smooth-relu",
    "the smoothed ReLU of Allen-Zhu & Li instead of ReLU",
    model={"activation": "smooth_relu", "q": 2, "rho": 0.1},
)
register(
    "trainable-head",
    "second layer trained too (ablation of the frozen a=1)",
    model={"train_second_layer": True},
)
