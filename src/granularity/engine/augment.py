"""Image augmentation on tensors, on the device (no torchvision): random crop with padding and
horizontal flip. Random draws come from an explicit CPU generator so runs are reproducible."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip: bool = True,
                     rows: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Zero-pad by ``pad`` pixels, crop back to the original size at a random offset per image,
    and flip half of the images horizontally. ``x`` is ``(B, C, H, W)`` float.

    ``rows=(lo, hi, n)``: ``x`` holds rows ``lo:hi`` of a batch of ``n``; the draws are made
    for all ``n`` images (so ``gen`` advances as for the whole batch) and rows ``lo:hi`` used."""
    b, c, h, w = x.shape
    lo, hi, n = rows if rows is not None else (0, b, b)
    if pad > 0:
        off = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)[:, lo:hi].to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        rows = off[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = off[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        m = (torch.rand(n, generator=gen)[lo:hi] < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(m, x.flip(3), x)
    return x.contiguous()
