"""Typed config of one pretrain -> transfer run (saved resolved as ``config.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainSerializer, ValidationInfo, field_validator, model_serializer, model_validator

from granularity.engine.labels import SourceSpec
from granularity.errors import GranularityError
from granularity.utils.config import Config


def _check_embedding(v: str) -> str:
    if v not in ("pca", "cnn", "lsa") and not str(v).endswith(".npy"):
        raise ValueError("must be 'pca', 'cnn', 'lsa' (token ids) or a path to a .npy file")
    return v


SourceField = Annotated[str, AfterValidator(SourceSpec), PlainSerializer(str, return_type=str)]
EmbeddingField = Annotated[str, AfterValidator(_check_embedding)]


class ModelConfig(Config):
    name: str = "cnn"  # a name from granularity.models.list_models(); the 3-conv CNN is ~1.7k img/s on 2 CPU threads
    options: dict[str, Any] = Field(default_factory=dict)  # constructor options, e.g. {"width": 16}

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from granularity.errors import unknown_name
        from granularity.models import list_models

        if v not in list_models():
            raise ValueError(str(unknown_name("model", v, list_models())).rstrip("."))
        return v


class StageConfig(Config):
    """Optimiser and schedule of one training stage (pretraining or transfer)."""

    epochs: int = Field(3, ge=0)  # passes over the training set
    batch_size: int = Field(128, ge=1)  # images per step
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)  # peak learning rate per step (batch_size images), not rescaled
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = Field(5e-4, ge=0)  # decoupled for AdamW, L2 for SGD
    schedule: Literal["cosine", "step", "constant"] = "cosine"  # per step; "step" = x0.1 at 50% and 75%
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from 0, in epochs
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True  # random crop (pad 2 for 28 px, 4 for 32 px) + horizontal flip; images only


# the simulator's protocols (granularity.vocabulary.PROTOCOLS)
Protocol = Literal["finetune", "probe", "map"]


class TransferStageConfig(StageConfig):
    # fresh head + all weights | fresh head on frozen features (linear probe) | fine->coarse by logsumexp
    protocol: Protocol = "finetune"
    epochs: int = Field(1, ge=0)
    # A fresh head needs large enough steps: 1 fine-tuning epoch after 2 leaf-pretraining epochs
    # (Fashion-MNIST 10k, 4-group target, seed 0) gave target acc 0.898 / 0.944 / 0.969 / 0.973
    # with lr 0.003 / 0.01 / 0.03 / 0.05 + 0.2 warm-up epochs.
    lr: float = Field(0.05, gt=0)
    warmup_epochs: float = Field(0.2, ge=0)


class RareConfig(Config):
    classes: list[int | str]  # fine (leaf) classes made rare inside their coarse class: ids or names
    keep_fraction: float = Field(0.03, gt=0, le=1)  # fraction of their training images kept


class TransferConfig(Config):
    """One run: pretrain on ``source`` labels, transfer to the ``target`` level, evaluate.

    ``source`` label functions (strings): ``target`` (the target level itself: the baseline),
    ``level:L`` (hierarchy level L; ``leaf`` = deepest), ``kmeans-within:K`` (K clusters in total,
    k-means of the embeddings inside each target class, so labels nest in the target),
    ``kmeans-global:K`` (k-means over the whole training set), ``random:K``, ``per-sample``.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None  # None: the data package's default location
    # the loader's keyword options (see docs/data-options.md), e.g. {"label_columns": ["genus", "species"]}
    # for a table or {"image_size": 64, "in_memory": false} for an image folder, plus
    # hierarchy_file for any data set; checked against the loader of `dataset`
    data_options: dict[str, Any] = Field(default_factory=dict)
    # training images (stratified subset); None = all. Unset: the data set's default_train_size
    # (10,000 for the built-in fashion-mnist, cifar100, wordnet-glosses; all rows of your own data)
    train_size: int | None = Field(10000, ge=1)
    test_size: int | None = Field(None, ge=1)  # test images; None = all
    data_seed: int = 0  # which subset
    # Training images held out as a validation split (stratified by leaf, drawn with data_seed
    # after train_size and rare are applied; never trained on, not in the normalisation
    # statistics). Its target error is reported as result["val"]: select on it, report on test.
    val_size: int | None = Field(None, ge=1)
    target: int = Field(2, ge=1)  # hierarchy level of the downstream task (Fashion-MNIST: 1 = 2 groups, 2 = 4 groups, 3 = 10 classes)
    # pretraining label function, see the class docstring; parsed once here (a SourceSpec: the
    # string plus .kind and .k), written to config.json as the string
    source: SourceField = Field("leaf", validate_default=True)
    embedding: EmbeddingField = "pca"  # for k-means labels: "pca" (pixels), "cnn" (features of a CNN trained on the target), or a .npy path
    rare: RareConfig | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: StageConfig = Field(default_factory=StageConfig)
    transfer: TransferStageConfig = Field(default_factory=TransferStageConfig)
    seed: int = 0  # model init, shuffling, augmentation, label functions
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # bfloat16 autocast (+ channels-last model) in training and evaluation, float32 master weights
    # and losses. "auto" (default): on where the hardware has a fast bf16 path (a CUDA card with
    # bf16, a CPU with AVX512-BF16/AMX), float32 elsewhere; True: asked for (float32 without a
    # fast path, noted in result.json); False: float32. result.json's "precision" says what ran.
    bf16: bool | Literal["auto"] = "auto"
    tf32: bool = False  # TF32 matmuls/convolutions on CUDA (Ampere+); False = full float32 there
    eval_batch_size: int = Field(1000, ge=1)  # images per evaluation batch (on the CPU fed to the model in cache-sized chunks)
    # evaluate on the test set after every epoch (True) or only after the last epoch of each
    # stage (False: the intermediate lines of metrics.jsonl carry no test accuracies; the
    # results, which read only the last epoch's evaluation, are the same)
    eval_every_epoch: bool = True
    # DataLoader worker processes decoding images of a streamed data set (an image folder loaded
    # with in_memory=False, or too large for its max_memory_mb); 0 = decode in the main
    # process. In-memory data sets ignore it. Results do not depend on it.
    workers: int = Field(0, ge=0)
    save_checkpoints: bool = True  # every epoch, atomically; needed for resume
    # torch.use_deterministic_algorithms(True) + cudnn.benchmark=False while the run lasts: the
    # same run twice on one GPU gives the same numbers (slower; an op without a deterministic
    # kernel is an error). The CPU path is deterministic already. See docs/reliability.md.
    deterministic: bool = False
    # also checkpoint every N optimiser steps inside an epoch (None: at epoch ends only); a
    # resumed run continues from the step, bit-identical on the CPU. One process only (under
    # torchrun checkpoints stay per epoch). Never changes the numbers (not in a sweep's run id).
    checkpoint_every_steps: int | None = Field(None, ge=1)
    # seconds between progress lines inside an epoch (steps/s, images/s, ETA) when progress is
    # shown and stderr is not a terminal; a terminal gets a tqdm bar
    progress_every_s: float = Field(30.0, gt=0)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Fields added after runs existed are left out of dumps at their defaults, so config.json
        # files and sweep run ids of every run made before them stay valid (as in theory/config).
        out = handler(self)
        for key, default in _ADDED_DEFAULTS.items():
            if key in out and out[key] == default:
                out.pop(key)
        return out

    @model_validator(mode="after")
    def _default_train_size(self) -> TransferConfig:
        if "train_size" not in self.model_fields_set:
            from granularity.data.registry import DATASETS

            spec = DATASETS.get(self.dataset)
            self.__dict__["train_size"] = spec.default_train_size if spec else 10000
        return self

    @field_validator("data_options")
    @classmethod
    def _check_data_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from granularity.data.registry import DATASETS, check_options

        name = info.data.get("dataset")
        if not v or name not in DATASETS:  # an unknown name is reported when the data set loads
            return v
        try:
            return check_options(name, v)
        except GranularityError as exc:
            raise ValueError(str(exc).rstrip(".")) from None


# TransferConfig fields newer than stored runs, with the default under which they are not dumped
_ADDED_DEFAULTS = {"data_options": {}, "checkpoint_every_steps": None, "progress_every_s": 30.0, "eval_every_epoch": True}

