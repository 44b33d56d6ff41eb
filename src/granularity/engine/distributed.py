"""Data-parallel training of the engine with ``torch.distributed`` (launched by ``torchrun``).

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` in its environment; :func:`init_distributed` then joins the process group
(``env://``; NCCL on CUDA, gloo on the CPU) and returns a :class:`DistContext`. Without those
variables (or with ``WORLD_SIZE=1``) it returns the single-process context, on which every
method is a no-op, so the engine has one code path.

What the engine does with it (see ``docs/distributed.md``):

* every rank draws the same global permutation of an epoch (same seed) and each global batch of
  ``batch_size`` images is split into ``world_size`` contiguous chunks (``torch.tensor_split``:
  the first ``batch % world_size`` ranks get one image more); the loss of a rank is
  ``sum(loss_i) * world_size / global_batch`` so DDP's gradient average is exactly the mean over
  the global batch, whatever the remainder: the step count and lr schedule match one process;
* BatchNorm statistics are computed over the global batch (``nn.SyncBatchNorm`` on CUDA,
  :class:`CPUSyncBatchNorm` on the CPU, where torch's SyncBatchNorm refuses to run);
* evaluation is sharded: each rank predicts a contiguous slice of the test set and the rows are
  gathered, so every rank holds the full logits;
* only rank 0 reads and writes the run folder (config, metrics, checkpoints, predictions, result);
  what it reads at start (a finished result, a checkpoint, or an error) is broadcast, so a run
  folder need not be on a shared file system and no rank ever reads a half-written checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from granularity.errors import GranularityError

T = TypeVar("T")


@dataclass
class DistContext:
    """Rank, world size and device of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (no-ops in one process) ---------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum of each value over the ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; keep tensors in it on the CPU)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its value to every rank; a
        :class:`GranularityError` (or any exception) raised there is raised on every rank, so no
        rank waits forever on one that failed."""
        if not self.enabled:
            return fn()
        err: BaseException | None = None
        value = None
        if self.is_main:
            try:
                value = ("ok", fn())
            except GranularityError as exc:
                err, value = exc, ("user", str(exc))
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
                err, value = exc, ("fatal", f"{type(exc).__name__}: {exc}")
        kind, payload = self.broadcast_object(value)
        if err is not None:
            raise err
        if kind == "user":
            raise GranularityError(payload)
        if kind == "fatal":
            raise RuntimeError(f"rank 0 failed: {payload}")
        return payload

    # ---- sharding ----------------------------------------------------------------------------
    def shard_bounds(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous slice of ``n`` rows (``tensor_split``
        sizes: the first ``n % world_size`` ranks get one row more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's ``shard_bounds(n)`` rows (in rank order) on every rank."""
        if not self.enabled:
            return local
        import torch.distributed as dist

        base, extra = divmod(n, self.world_size)
        sizes = [base + (1 if r < extra else 0) for r in range(self.world_size)]
        width = max(sizes)
        dev = self._comm_device()
        pad = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=dev)
        pad[: len(local)] = local.to(dev)
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)  # (n, ...)

    def map_rows(self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        """``fn`` applied to this rank's slice of ``x``, gathered: a tensor, or a dict of tensors
        (e.g. per-level logits), each with ``len(x)`` rows on every rank."""
        if not self.enabled:
            return fn(x)
        start, stop = self.shard_bounds(len(x))
        out = fn(x[start:stop])
        if isinstance(out, dict):
            return {k: self.gather_rows(v, len(x)) for k, v in out.items()}
        return self.gather_rows(out, len(x))

    # ---- models ------------------------------------------------------------------------------
    def convert_batchnorm(self, model: nn.Module) -> nn.Module:
        """BatchNorm layers that normalise with the statistics of the global batch (same
        parameter names and buffers, so checkpoints are those of a one-process run)."""
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return CPUSyncBatchNorm.convert(model)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (it broadcasts rank 0's weights and buffers on
        construction); the module itself in one process. Wrap again after a head is replaced."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        if self.device.type == "cpu":
            import warnings

            # oneDNN returns the weight gradient of a 1-input-channel conv with other (equivalent)
            # strides than DDP's bucket; the copy is correct and tiny, the warning only noise
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DDP(module, device_ids=ids, output_device=self.device.index if ids else None)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 (shutting down: nothing left to report to)
            pass


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment variables (once per process)
    and pick this rank's device: ``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GranularityError(
                f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world)
        # leave the group before the interpreter exits: a process ending (e.g. interrupted) with
        # the group alive can abort in the backend's threads ("terminate called ...", exit -6)
        import atexit

        atexit.register(_leave_process_group)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients (every
    rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch for CPU (gloo) process groups.

    ``nn.SyncBatchNorm`` only runs on accelerators. In training this layer all-reduces the
    per-channel sum and count, then the sum of squared deviations (two passes: as exact as one
    process's BatchNorm) with an all-reduce that is
    differentiable (:class:`_AllReduceSum`), so the gradient also flows through the other ranks' statistics. In eval mode,
    or outside a process group, it is a plain BatchNorm on the running statistics.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        n_local = torch.tensor([x.numel() // c], dtype=xf.dtype)
        s = _AllReduceSum.apply(torch.cat([xf.sum(dims), n_local]))  # (C + 1,): per-channel sum, count
        n = s[c]
        mean = s[:c] / n
        var = _AllReduceSum.apply(((xf - mean.reshape(shape)) ** 2).sum(dims)) / n  # biased, as BatchNorm
        y = (xf - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm layer of ``module`` (weights and buffers copied)."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            state = module.state_dict()
            out.load_state_dict(state)
            if state:
                out.to(next(iter(state.values())).device)
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out
