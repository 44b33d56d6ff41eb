"""Where a run computes: the device named by a config and the memory free on it."""

from __future__ import annotations

import os

import torch

from granularity.errors import GranularityError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GranularityError("The 'device' parameter is 'cuda' but no CUDA device is available; use cpu or auto.")
    return torch.device(name)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for a run's tensors on ``device`` (CUDA: free device memory; CPU: available
    physical pages); None when the platform cannot tell (callers then skip their check)."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
