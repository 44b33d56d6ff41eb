"""The stage loop of one run: the model, its state, pretraining, transfer, evaluation and the
final files. Every training stage (pretraining, fine-tuning, the linear probe) goes through
:meth:`Run.train_stage`; the inputs come prepared from :class:`~granularity.engine.inputs.RunData`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from granularity.engine.config import StageConfig, TransferConfig
from granularity.engine.distributed import DistContext
from granularity.engine.folder import RunFolder
from granularity.engine.inputs import RunData, data_sizes
from granularity.engine.fused_group import current_fused_with as fused_with, epoch_fn, levels_fn
from granularity.engine.train import (
    EpochProgress,
    bf16_active,
    channels_last_active,
    engine_layout,
    epoch_generator,
    make_optimizer,
    make_scheduler,
    predict,
    predict_levels,
    train_epoch,
)


class _Interrupt(KeyboardInterrupt):
    """Raised by the test hook ``stop_after_steps`` to simulate a killed run."""


def rare_leaf_ids(cfg: TransferConfig, leaf_names: list[str]) -> list[int]:
    if cfg.rare is None:
        return []
    return sorted({leaf_names.index(c) if isinstance(c, str) else int(c) for c in cfg.rare.classes})



def _precision(cfg: TransferConfig, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    bf16 = bf16_active(device, cfg.bf16)
    rec: dict[str, Any] = {"bf16_autocast": bf16, "channels_last": channels_last_active(device, cfg.bf16),
                           "tf32": cfg.tf32 and cuda}
    if cfg.deterministic:
        rec["deterministic_algorithms"] = True
    notes = []
    if cfg.bf16 is True and not bf16:  # asked for explicitly ("auto" falls back silently)
        notes.append(f"bf16 needs a fast bf16 path (CUDA with bf16, or a CPU with AVX512-BF16/AMX); this {device.type} computed in float32")
    if cfg.tf32 and not cuda:
        notes.append("tf32 applies on CUDA only")
    if notes:
        rec["note"] = "; ".join(notes)
    return rec


class Run:
    """One run's model, state and stages. Every training stage (pretraining, fine-tuning, the
    linear probe) goes through :meth:`train_stage`; ``state`` is what a checkpoint resumes."""

    def __init__(self, cfg: TransferConfig, data: RunData, dctx: DistContext, folder: RunFolder, progress: bool,
                 stop_after_steps: int | None) -> None:
        from granularity.models import create_model

        self.cfg, self.d, self.dctx, self.folder = cfg, data, dctx, folder
        self.device, self.progress, self.stop_after_steps = dctx.device, progress, stop_after_steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # model init without touching the caller's global RNG
            model = create_model(cfg.model.name, tuple(data.x_tr.shape[1:]), data.src.num_classes, **cfg.model.options)
        model = dctx.convert_batchnorm(model.to(self.device))  # world_size > 1: statistics of the global batch
        self.model = engine_layout(model, self.device, cfg.bf16)  # NHWC: the CPU's fast convolutions, CUDA's under bf16
        self.sizes = {lv: int(data.ds.hierarchy.num_classes(lv)) for lv in data.lv_te}
        self.state: dict[str, Any] = {"stage": "pretrain", "epoch": 0, "history": [], "pretrain_final": {}}
        self.resumed: dict[str, Any] | None = None
        self.steps = 0
        self.meter: EpochProgress | None = None  # progress inside the current epoch (progress=True, rank 0)
        self._opt_sched: tuple[Any, Any] = (None, None)  # the stage's optimiser and scheduler, for step checkpoints
        self.val_logits: torch.Tensor | None = None  # target logits on the validation split (val_size)
        self.pretrain_eval: dict[int, torch.Tensor] | None = None  # the last pretraining epoch's test logits

    # ---- checkpoint / resume ---------------------------------------------------------------
    def restore(self, resumed: dict[str, Any] | None) -> None:
        """Model and state from a checkpoint (read by rank 0; metrics.jsonl already rewritten)."""
        self.resumed = resumed
        if resumed is None:
            return
        if resumed["stage"] == "transfer" and self.cfg.transfer.protocol != "map":  # "map" keeps the source head
            with torch.random.fork_rng(devices=[]):
                self.model.reset_head(self.d.n_target)
        self.model.load_state_dict(resumed["model"])
        self.state.update({k: resumed[k] for k in ("stage", "epoch", "history", "pretrain_final", "partial") if k in resumed})

    def checkpoint(self, opt, sched) -> None:
        """Rank 0, from the unwrapped model: the same file as a one-process run's."""
        if not self.cfg.save_checkpoints:
            return
        self.folder.checkpoint({
            **self.state,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            # every draw comes from generators derived from (seed, stage, epoch[, step]), so
            # resuming needs no generator state; the global states are kept for inspection only
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.folder.cfg_d,
        })

    def _on_step(self, pos: dict) -> None:
        self.steps += 1
        if self.meter is not None:
            self.meter.update(pos)
        every = self.cfg.checkpoint_every_steps
        # mid-epoch checkpoints in one process (under DDP each rank's running sums differ)
        if every and not self.dctx.enabled and pos["step"] % every == 0 and pos["step"] < pos["n_steps"]:
            self.state["partial"] = {"epoch": self.state["epoch"] + 1, "step": pos["step"],
                                     "totals": list(pos["totals"]), "gen_state": pos["gen"].get_state()}
            self.checkpoint(*self._opt_sched)
        if self.stop_after_steps is not None and self.steps >= self.stop_after_steps:
            raise _Interrupt(f"stopped after {self.steps} steps (test hook)")

    # ---- evaluation ------------------------------------------------------------------------
    def accuracies(self, level_logits: dict[int, torch.Tensor]) -> dict[str, float]:
        return {f"acc_level{lv}": float((z.argmax(1).numpy() == self.d.lv_te[lv]).mean())
                for lv, z in sorted(level_logits.items())}

    def test_levels(self, maps: dict[int, np.ndarray | None], fn=None, x=None, normalise=True) -> dict[int, torch.Tensor]:
        self.model.eval()
        norm = self.d.norm if normalise else None
        # world_size > 1: each rank predicts its slice of the test set, the rows are gathered
        levels = levels_fn(predict_levels)  # inside a fused group: evaluated with the others
        return self.dctx.map_rows(lambda xs: levels(fn or self.model, xs, norm, self.cfg.eval_batch_size,
                                                    self.device, maps, self.sizes, self.cfg.bf16),
                                  self.d.x_te if x is None else x)

    def log_epoch(self, stage: str, epoch: int, train_m: dict, level_logits: dict, seconds: float, n_imgs: int) -> None:
        rec = {"stage": stage, "epoch": epoch, **train_m, **self.accuracies(level_logits), "seconds": seconds,
               "images_per_s": n_imgs / max(seconds, 1e-9)}
        self.state["history"].append(rec)
        self.folder.log(rec)
        if self.progress and self.dctx.is_main:
            accs = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith(("acc_", "train_")))
            print(f"[{self.folder.out.name}] {stage} epoch {epoch}: {accs} ({seconds:.1f}s)", flush=True)

    # ---- the one training loop -------------------------------------------------------------
    def train_stage(self, name: str, stage: StageConfig, params, net: torch.nn.Module, x, y: torch.Tensor,
                    norm: Callable, evaluate: Callable[[], dict[int, torch.Tensor]], bf16: bool
                    ) -> dict[int, torch.Tensor] | None:
        """Epochs ``state['epoch'] + 1 .. stage.epochs`` of stage ``name`` ("pretrain" or
        "transfer"): train, evaluate, log, checkpoint; the optimiser and scheduler resume from
        the checkpoint when it was written in this stage. Returns the last epoch's evaluation
        (None when no epoch ran), so that a caller needing the final model's test logits does
        not evaluate the same model again."""
        opt = make_optimizer(params, stage)
        sched = make_scheduler(opt, stage, -(-len(y) // stage.batch_size))
        r = self.resumed
        if r is not None and r["stage"] == self.state["stage"] and r["optimizer"] is not None:
            opt.load_state_dict(r["optimizer"])
            sched.load_state_dict(r["scheduler"])
        net = self.dctx.wrap(net)  # DistributedDataParallel when world_size > 1
        self._opt_sched = (opt, sched)
        n_steps = -(-len(y) // stage.batch_size)
        last = None
        for epoch in range(self.state["epoch"] + 1, stage.epochs + 1):
            part = self.state.get("partial")
            start = part if part is not None and part["epoch"] == epoch else None
            label = f"{name} epoch {epoch}"
            if self.progress and self.dctx.is_main:
                self.meter = EpochProgress(f"[{self.folder.out.name}] {label}", n_steps, start["step"] if start else 0,
                                           start["totals"][2] if start else 0, self.cfg.progress_every_s, self.dctx.world_size)
            t0 = time.perf_counter()
            train = epoch_fn(train_epoch)  # inside a fused group (engine.fused_group): trained with the others
            tm = train(net, x, y, norm, stage, opt, sched, epoch_generator(self.cfg.seed, name, epoch), self.device,
                       bf16, self._on_step, dist=self.dctx, label=label, start=start)
            dt = time.perf_counter() - t0
            self.meter = None
            # the last epoch's evaluation is the stage's result; earlier ones only fill metrics.jsonl
            last = evaluate() if self.cfg.eval_every_epoch or epoch == stage.epochs else {}
            # a resumed epoch: seconds and images/s of the steps this invocation trained
            self.log_epoch(name, epoch, tm, last, dt, len(y) - (start["totals"][2] if start else 0))
            self.state["epoch"], self.state["partial"] = epoch, None
            self.checkpoint(opt, sched)
        return last

    # ---- stages ----------------------------------------------------------------------------
    def pretrain(self) -> None:
        """Stage 1, pretraining on the source labels; then the switch to the transfer stage."""
        if self.state["stage"] != "pretrain":
            return
        cfg, d, p = self.cfg, self.d, self.cfg.pretrain
        self.pretrain_eval = self.train_stage("pretrain", p, self.model.parameters(), self.model, d.x_tr,
                                              torch.as_tensor(d.src.labels), d.norm, lambda: self.test_levels(d.src_maps),
                                              cfg.bf16)
        last = self.state["history"][-1] if p.epochs > 0 else {}  # the last pretraining epoch's evaluation
        self.state["pretrain_final"] = {k: v for k, v in last.items() if k.startswith("acc_level")}
        self.state["stage"], self.state["epoch"] = "transfer", 0
        if cfg.transfer.protocol != "map":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)  # fresh head, reproducibly
                self.model.reset_head(d.n_target)
        self.resumed = None
        self.checkpoint(None, None)

    def transfer(self) -> dict[int, torch.Tensor]:
        """Stage 2, transfer to the target; returns the final test logits at every level."""
        cfg, d, t, model = self.cfg, self.d, self.cfg.transfer, self.model
        y_tgt = torch.as_tensor(d.lv_tr[cfg.target])
        if t.protocol == "map":
            if d.x_val is not None:
                self.val_logits = self.test_levels({cfg.target: d.src_maps[cfg.target]}, x=d.x_val)[cfg.target]
            levels = {lv: d.src_maps[lv] for lv in d.tgt_maps if d.tgt_maps[lv] is not None}
            pre = self.pretrain_eval  # the pretrained model's last evaluation, when it ran in this process
            if pre is not None and all(lv in pre for lv, gm in levels.items() if gm is not None):
                return {lv: pre[lv] for lv, gm in levels.items() if gm is not None}  # the same model: no second pass
            return self.test_levels(levels)
        if t.protocol == "finetune":
            last = self.train_stage("transfer", t, model.parameters(), model, d.x_tr, y_tgt, d.norm,
                                    lambda: self.test_levels(d.tgt_maps), cfg.bf16)
            if d.x_val is not None:
                self.val_logits = self.test_levels({cfg.target: d.tgt_maps[cfg.target]}, x=d.x_val)[cfg.target]
            return last if last is not None else self.test_levels(d.tgt_maps)  # the last epoch evaluated it
        # linear probe: the backbone is frozen, so its features are computed once
        model.eval()
        feats = lambda xs: predict(model.forward_features, xs, d.norm, cfg.eval_batch_size, self.device, cfg.bf16)  # noqa: E731
        f_tr, f_te = self.dctx.map_rows(feats, d.x_tr).to(self.device), self.dctx.map_rows(feats, d.x_te).to(self.device)
        probe = lambda: self.test_levels(d.tgt_maps, model.head, f_te, False)  # noqa: E731
        last = self.train_stage("transfer", t.model_copy(update={"augment": False}), model.head.parameters(),
                                model.head, f_tr, y_tgt, lambda z: z, probe, False)
        if d.x_val is not None:
            f_val = self.dctx.map_rows(feats, d.x_val).to(self.device)
            self.val_logits = self.test_levels({cfg.target: d.tgt_maps[cfg.target]}, model.head, f_val, False)[cfg.target]
        return last if last is not None else probe()

    def target_logits(self, x: Any) -> torch.Tensor:
        """Target logits of the final model on inputs ``x``, computed as for the validation split."""
        cfg, d, t = self.cfg, self.d, self.cfg.target
        if cfg.transfer.protocol == "map":
            return self.test_levels({t: d.src_maps[t]}, x=x)[t]
        if cfg.transfer.protocol == "finetune":
            return self.test_levels({t: d.tgt_maps[t]}, x=x)[t]
        self.model.eval()
        feats = lambda xs: predict(self.model.forward_features, xs, d.norm, cfg.eval_batch_size, self.device, cfg.bf16)  # noqa: E731
        return self.test_levels({t: d.tgt_maps[t]}, self.model.head, self.dctx.map_rows(feats, x).to(self.device), False)[t]

    def variant_figures(self, result: dict[str, Any]) -> None:
        """Target error on the other versions of the test and validation rows (``d.variants``):
        ``result["variants"][name]`` (per fine class too), ``result[f"{name}_error"]`` and
        ``result["val"][f"{name}_error"]``; a planted cue's settings and counts as ``result["cue"]``."""
        cfg, d = self.cfg, self.d
        names = list(d.ds.leaf_names)
        result["variants"] = {}
        for name, x in sorted(d.variants.get("test", {}).items()):
            fig = summarise(self.target_logits(x), d.lv_te[cfg.target], d.leaf_te, names, rare_leaf_ids(cfg, names))
            result["variants"][name] = fig
            result[f"{name}_error"] = fig["target_error"]
        for name, x in sorted(d.variants.get("val", {}).items()):
            ok = self.target_logits(x).argmax(1).numpy() == d.y_val
            result["val"][f"{name}_error"] = float(1 - ok.mean())
        if "cue" in d.ds.info:
            result["cue"] = d.ds.info["cue"]

    # ---- final files -----------------------------------------------------------------------
    def finish(self, final: dict[int, torch.Tensor], t_start: float) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        logits = final[cfg.target]  # (N_test, n_target)
        y_tgt = d.lv_te[cfg.target]
        result = self.result(final, logits)
        result["seconds"] = time.perf_counter() - t_start  # this invocation (a resumed run: the rest only)
        result["train_seconds"] = sum(r["seconds"] for r in self.state["history"])
        self.folder.finish(result, {"pred": logits.argmax(1).numpy().astype(np.int32),
                                    "margin": _margins(logits, y_tgt).astype(np.float32),
                                    "y_target": y_tgt.astype(np.int32), "y_leaf": d.leaf_te.astype(np.int32)},
                           keep_checkpoint=cfg.save_checkpoints)
        self.dctx.barrier()  # every rank returns once the run folder is complete
        return result

    def result(self, final: dict[int, torch.Tensor], logits: torch.Tensor) -> dict[str, Any]:
        cfg, d, ds = self.cfg, self.d, self.d.ds
        names = list(ds.leaf_names)
        unseen = [names.index(c) for c in ds.info.get("unseen_classes", ())]  # data option unseen=score
        result = summarise(logits, d.lv_te[cfg.target], d.leaf_te, names, rare_leaf_ids(cfg, names), unseen)
        result.update({
            "levels": self.accuracies(final),
            "pretrain_levels": self.state["pretrain_final"],
            "source": str(cfg.source),
            "source_family": d.src.family,
            "num_source_classes": d.src.num_classes,
            "label_function_meta": d.src.meta,
            "target_level": cfg.target,
            "num_target_classes": d.n_target,
            "protocol": cfg.transfer.protocol,
            "hierarchy_hash": getattr(ds.hierarchy, "content_hash", None),
            "data": self.folder.data,  # the data fingerprint (granularity.data.fingerprint)
            "dataset": {"name": ds.name, "version": getattr(ds, "version", None),
                        **data_sizes(ds, 0 if d.y_val is None else len(d.y_val))},
            "model": {"name": cfg.model.name, "params": int(sum(p.numel() for p in self.model.parameters()))},
            "seed": cfg.seed,
            "device": str(self.device),
            "world_size": self.dctx.world_size,
            **({"fused_with": fused_with()} if fused_with() is not None else {}),  # trained in a fused group of K
            "precision": _precision(cfg, self.device),
        })
        if d.y_val is not None:  # selection figures: the validation split held out of training
            ok = self.val_logits.argmax(1).numpy() == d.y_val
            result["val"] = {"target_error": float(1 - ok.mean()), "target_acc": float(ok.mean()), "n": int(len(ok))}
        if self.d.variants:
            self.variant_figures(result)
        return result


def _margins(logits: torch.Tensor, y_target: np.ndarray) -> np.ndarray:
    """Softmax probability of the true class minus the largest other one (> 0 iff correct)."""
    probs = torch.softmax(logits, 1)
    y = torch.as_tensor(y_target)
    p_true = probs.gather(1, y[:, None])[:, 0]
    other = probs.clone()
    other[torch.arange(len(y)), y] = -1.0
    return (p_true - other.max(1).values).numpy()

def summarise(logits: torch.Tensor, y_target: np.ndarray, y_leaf: np.ndarray, leaf_names: list[str],
              rare: list[int], unseen: list[int] = ()) -> dict[str, Any]:
    """Target error overall, per fine (leaf) class, on rare subclasses versus the rest, and on
    classes without training rows (``unseen``) versus the seen ones."""
    correct = logits.argmax(1).numpy() == y_target
    per_fine = {}
    for c, name in enumerate(leaf_names):
        sel = y_leaf == c
        if sel.any():
            per_fine[name] = float(correct[sel].mean())
    out: dict[str, Any] = {"target_acc": float(correct.mean()), "target_error": float(1 - correct.mean()),
                           "per_fine_class_target_acc": per_fine}
    if rare:
        is_rare = np.isin(y_leaf, rare)
        out["rare_classes"] = [leaf_names[c] for c in rare]
        out["rare_error"] = float(1 - correct[is_rare].mean()) if is_rare.any() else float("nan")
        out["common_error"] = float(1 - correct[~is_rare].mean()) if (~is_rare).any() else float("nan")
    if unseen:
        new = np.isin(y_leaf, unseen)
        out["unseen_classes"] = [leaf_names[c] for c in unseen]
        out["unseen_error"] = float(1 - correct[new].mean()) if new.any() else float("nan")
        out["seen_error"] = float(1 - correct[~new].mean()) if (~new).any() else float("nan")
    return out
