"""Device helpers shared by the simulator, the engine and the benchmarks."""

from __future__ import annotations

import os

import torch

from granularity.errors import GranularityError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda"``; asking for CUDA
    without a CUDA device is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise GranularityError("The 'device' parameter is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes free on ``device``: free GPU memory for CUDA, available RAM otherwise (None:
    unknown, so callers skip their memory check)."""
    try:
        if device is not None and device.type == "cuda":
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
