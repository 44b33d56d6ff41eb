"""Typed configs of the simulator. Every default is ours unless marked (paper); see
``docs/theory.md``. Sizes are validated against each other at the boundary."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from granularity.utils.config import Config

Range = tuple[float, float]


def _check_range(v: Range, name: str) -> Range:
    lo, hi = v
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo < 0:
        raise ValueError(f"{name} must be [low, high] with 0 <= low <= high")
    return v


class DataConfig(Config):
    """The hierarchical multi-view distribution (docs/theory.md, "The model in brief")."""

    d: int = Field(256, ge=2, le=65536, description="patch dimension")
    P: int = Field(16, ge=1, le=4096, description="patches per sample")
    K: int = Field(2, ge=2, le=4096, description="superclasses (paper: 2)")
    k: int | list[int] = Field(8, description="subclasses per superclass: one int or one per superclass")
    deeper: list[int] = Field(
        default_factory=list,
        description="branching of extra levels below the subclasses (deeper trees); [] = 2 levels",
    )
    views_common: int = Field(1, ge=1, le=64, description="features per superclass (paper: 1)")
    views_fine: int = Field(1, ge=1, le=64, description="features per node below level 1 (paper: 1)")
    s: int = Field(2, ge=1, description="patches carrying each present feature (sparsity)")
    common_strength: Range = (1.0, 1.0)
    fine_strength: Range = (1.0, 1.0)
    sigma: float | None = Field(None, ge=0, description="Gaussian noise std per coordinate; None = 1/sqrt(d)")
    gamma: float = Field(0.05, ge=0, description="feature-noise coefficient on feature-free patches")
    hard_strength: Range = (0.0, 0.0)
    hard_noise: float = Field(0.0, ge=0, description="extra noise std on a hard sample's weakened patches")
    hard_level: int | None = Field(
        None, ge=1,
        description="hard samples lose the features of levels 1..hard_level; None = transfer.target "
        "(1 when the distribution is used on its own)",
    )
    allow_hard_level_mismatch: bool = Field(
        False, description="allow a hard_level other than transfer.target (a deliberate ablation)"
    )
    train_hard_fraction: float = Field(0.0, ge=0, le=1, description="hard samples in training (paper: 0)")
    tail_exponent: float = Field(
        0.0, ge=0, le=10, description="Zipf exponent of subclass frequencies within a superclass (0 = uniform)"
    )
    dictionary: Literal["random", "standard"] = "random"

    _check_cs = field_validator("common_strength")(lambda v: _check_range(v, "common_strength"))
    _check_fs = field_validator("fine_strength")(lambda v: _check_range(v, "fine_strength"))
    _check_hs = field_validator("hard_strength")(lambda v: _check_range(v, "hard_strength"))

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: int | list[int]) -> int | list[int]:
        values = v if isinstance(v, list) else [v]
        if not values or any(x < 1 for x in values):
            raise ValueError("k must be >= 1 (an int or a list with one int >= 1 per superclass)")
        return v

    @field_validator("deeper")
    @classmethod
    def _check_deeper(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("every branching factor in deeper must be >= 1")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # The opt-in is left out of dumps while it is off, so that config.json files and config
        # hashes of every run made before it existed stay valid (it changes no result by itself).
        out = handler(self)
        if not self.allow_hard_level_mismatch:
            out.pop("allow_hard_level_mismatch", None)
        return out

    @model_validator(mode="after")
    def _check_sizes(self) -> DataConfig:
        if isinstance(self.k, list) and len(self.k) != self.K:
            raise ValueError(f"k has {len(self.k)} entries but K={self.K}; give one k per superclass or one int")
        if self.hard_level is not None and self.hard_level > self.levels:
            raise ValueError(f"hard_level={self.hard_level} is deeper than the tree's {self.levels} levels")
        blocks = self.views_common + self.views_fine * (self.levels - 1)
        if blocks * self.s > self.P:
            raise ValueError(
                f"each sample needs {blocks} feature blocks of s={self.s} patches = {blocks * self.s} "
                f"patches but P={self.P}; lower s or the views, or raise P"
            )
        if self.num_features > self.d:
            raise ValueError(
                f"the dictionary needs {self.num_features} orthonormal features but d={self.d}; "
                f"they do not fit: lower K, k, deeper or views, or raise d"
            )
        return self

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def k_list(self) -> list[int]:
        return list(self.k) if isinstance(self.k, list) else [self.k] * self.K

    @property
    def levels(self) -> int:
        return 2 + len(self.deeper)

    @property
    def nodes_per_level(self) -> list[int]:
        counts = [self.K, sum(self.k_list)]
        for b in self.deeper:
            counts.append(counts[-1] * b)
        return counts

    @property
    def num_features(self) -> int:
        n = self.nodes_per_level
        return n[0] * self.views_common + sum(n[1:]) * self.views_fine

    @property
    def noise_std(self) -> float:
        return 1.0 / math.sqrt(self.d) if self.sigma is None else self.sigma


class SimModelConfig(Config):
    """The two-layer patch CNN (docs/theory.md, "The model in brief")."""

    m: int = Field(16, ge=1, le=4096, description="neurons per output class")
    activation: Literal["relu", "smooth_relu"] = "relu"
    q: int = Field(2, ge=2, le=8, description="smoothed ReLU degree (>2 makes gradients vanish)")
    rho: float = Field(0.1, gt=0, description="smoothed ReLU threshold")
    bias: float = Field(0.0, le=0, description="fixed bias (a negative threshold) on every neuron")
    init_std: float | None = Field(None, gt=0, description="first-layer init std; None = 1/sqrt(d)")
    train_second_layer: bool = Field(False, description="paper: second layer frozen at 1")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="operands of the forward and weight-gradient matmuls (float32 accumulation and master "
        "weights either way); bfloat16 only where the hardware has a fast path, else float32 with a note",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # float32 is left out of dumps, so that config.json files and config hashes of every run
        # made before the setting existed stay valid; bfloat16 enters the hash (another run id).
        out = handler(self)
        if self.precision == "float32":
            out.pop("precision", None)
        return out


class TrainConfig(Config):
    """SGD on softmax cross-entropy (calibrated defaults, see docs/theory.md)."""

    n_train: int = Field(2000, ge=2, description="training samples per seed")
    lr: float = Field(0.5, gt=0, description="SGD step size")
    steps: int = Field(3000, ge=1, description="SGD steps")
    batch_size: int | None = Field(128, ge=1, description="minibatch size; None = full batch")
    weight_decay: float = Field(
        0.0, ge=0, description="L2 decay of every pretrained parameter (W, and a if trained)"
    )
    log_points: int = Field(20, ge=2, le=200, description="log-spaced steps at which alignment is recorded")


class SimTransferConfig(Config):
    """How a pretrained model is evaluated on the target (coarse) task: the protocols are
    :data:`granularity.vocabulary.PROTOCOLS`, as in the real-data engine."""

    protocols: list[Literal["map", "probe", "finetune"]] = ["map", "probe", "finetune"]
    sources: list[int | Literal["coarse", "fine"]] = Field(
        default_factory=lambda: ["coarse", "fine"], description="pretraining levels to compare"
    )
    # the engine's word (TransferConfig.target, --target)
    target: int = Field(1, ge=1, description="level of the target task (1 = superclasses)")
    probe_steps: int = Field(300, ge=1, description="full-batch Adam steps for the linear probe")
    probe_lr: float = Field(0.05, gt=0)
    finetune_steps: int = Field(500, ge=1, description="SGD steps of full fine-tuning on target labels")
    finetune_lr: float = Field(0.1, gt=0)
    n_test: int = Field(2000, ge=1, description="easy and hard test samples each, per seed")


# The names of before the engine's configs took them (kept: public API of granularity.theory);
# only the engine's classes are called TransferConfig and ModelConfig.
ModelConfig = SimModelConfig
TransferConfig = SimTransferConfig


class SimConfig(Config):
    """One simulator experiment: data, model, training, transfer, seeds."""

    name: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    model: SimModelConfig = Field(default_factory=SimModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    transfer: SimTransferConfig = Field(default_factory=SimTransferConfig)
    seeds: int = Field(5, ge=1, le=1000, description="independent seeds (fresh data + init each)")
    seed0: int = Field(0, ge=0, description="first seed")
    seed_batch: int = Field(5, ge=1, le=64, description="seeds trained together as one batched computation")
    device: Literal["auto", "cpu", "cuda", "mps"] = "cpu"
    checkpoint_every: int = Field(
        0, ge=0, description="SGD steps between mid-training checkpoints; 0 = one every 30 s of training"
    )

    @model_validator(mode="after")
    def _check_levels(self) -> SimConfig:
        L = self.data.levels
        if self.transfer.target > L:
            raise ValueError(f"transfer.target={self.transfer.target} is deeper than the {L} levels")
        for src in self.transfer.sources:
            lvl = self.source_level(src)
            if not 1 <= lvl <= L:
                raise ValueError(f"source level {src!r} must be in 1..{L}")
            if lvl < self.transfer.target:
                raise ValueError(
                    f"source level {lvl} is coarser than transfer.target={self.transfer.target}; "
                    "pretraining labels must be at least as fine as the target"
                )
        if self.data.hard_level is None:  # resolved here, so that dumps and hashes carry the level
            self.data = self.data.model_copy(update={"hard_level": self.transfer.target})
        self.check_hard_level()
        return self

    def check_hard_level(self) -> None:
        """Refuse hard samples at another level than the evaluated task unless asked for: the
        hard error would silently be an easy error (or measure another task's hard samples)."""
        from granularity.errors import GranularityError

        t, h = self.transfer.target, self.data.hard_level
        h = 1 if h is None else h  # what the sampler does with an unresolved level
        if h != t and not self.data.allow_hard_level_mismatch:
            raise GranularityError(
                f"data.hard_level={h} differs from transfer.target={t}: hard test samples must lose "
                f"the features of levels 1..{t}; leave data.hard_level null (= the target level) or set "
                "data.allow_hard_level_mismatch=true to study the mismatch on purpose"
            )

    def source_level(self, src: int | str) -> int:
        if src == "coarse":
            return self.transfer.target
        if src == "fine":
            return self.data.levels
        return int(src)
