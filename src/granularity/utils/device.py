"""The ``device`` parameter: ``auto``, ``cpu``, ``cuda`` (``cuda:N``) or ``mps``.

``auto`` is CUDA when available, else the CPU; it never picks MPS (Apple silicon): MPS lacks some
operations and float64, so it is used only when asked for with ``mps``. Operations MPS lacks run
on the CPU when ``PYTORCH_ENABLE_MPS_FALLBACK=1`` is set before torch is imported (the
``granularity`` command sets it; PyTorch then prints one warning line per such operation).
An asked-for device that is absent is a one-line error.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from granularity.errors import GranularityError

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built() and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` parameter value (see the module docstring)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise GranularityError(
            f"The 'device' parameter is {name!r} but no CUDA device is available; use 'auto' or 'cpu'."
        )
    if name == "mps":
        if not mps_available():
            raise GranularityError(
                "The 'device' parameter is 'mps' but no MPS device is available (needs Apple "
                "silicon and a torch built with MPS); use 'auto' or 'cpu'."
            )
        if os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", "0") in ("", "0"):
            warnings.warn(
                "device 'mps': operations MPS lacks will raise; set PYTORCH_ENABLE_MPS_FALLBACK=1 "
                "before starting Python to run them on the CPU.", RuntimeWarning, stacklevel=2,
            )
    return torch.device(name)


def available_memory(device: torch.device | str | None = "cpu") -> int | None:
    """Bytes free for a run's tensors on ``device`` (CUDA: free device memory; CPU: available
    physical pages); None when the platform cannot tell (callers then skip their check)."""
    device = torch.device(device if device is not None else "cpu")
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def bf16_fast(device: torch.device) -> bool:
    """Whether bfloat16 matmuls have a hardware fast path on ``device``: a CUDA card that
    supports bf16, or a CPU with AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than
    float32, so callers fall back to float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> bool:
    """The CPU's answer, read once per process (the engine asks at every step)."""
    if "AMX" in torch.backends.cpu.get_cpu_capability():
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False
