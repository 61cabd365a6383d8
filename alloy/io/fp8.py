"""DeepSeek-style block FP8: `float8_e4m3fn` weights with one `weight_scale_inv` per block.

A weight W of shape (R, C) is stored as Q = W / s (rounded to e4m3) and S of shape
(ceil(R/b), ceil(C/b)) with W ≈ Q · S broadcast over b×b blocks (b = 128 by default, from the
config's `quantization_config.weight_block_size`). Merges dequantize, combine in the compute dtype and
re-quantize with fresh scales (amax / 448 per block); raw FP8 bytes are never interpolated.
"""
from __future__ import annotations

from typing import Mapping

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_SUFFIX = "_scale_inv"


def block_size(config: Mapping) -> tuple[int, int]:
    """The (rows, cols) block of a checkpoint's FP8 quantization config (128×128 by default)."""
    q = config.get("quantization_config") or {}
    size = q.get("weight_block_size") or (128, 128)
    return int(size[0]), int(size[1])


def is_fp8_config(config: Mapping) -> bool:
    """True when `config.json` declares DeepSeek-style FP8 weights."""
    q = config.get("quantization_config") or {}
    return q.get("quant_method") == "fp8"


def _expand(scale: torch.Tensor, shape: torch.Size, block: tuple[int, int]) -> torch.Tensor:
    rows, cols = shape
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def dequantize(q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32,
               block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """W = Q · S with S broadcast over blocks, in `dtype` (never modifies its inputs)."""
    if q.dim() != 2:
        raise ValueError(f"block FP8 weights are 2-D, got shape {tuple(q.shape)}")
    want = (-(-q.shape[0] // block[0]), -(-q.shape[1] // block[1]))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"scale shape {tuple(scale_inv.shape)} does not match weight {tuple(q.shape)} "
                         f"with {block[0]}x{block[1]} blocks (expected {want})")
    out = q.to(torch.float32)
    out.mul_(_expand(scale_inv.to(torch.float32), q.shape, block))
    return out.to(dtype)


def quantize(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, S): e4m3 values and float32 per-block scales S = amax(|W| over the block) / 448.

    A block that is all zero gets scale 1 (its values are 0 whatever the scale).
    """
    if w.dim() != 2:
        raise ValueError(f"block FP8 weights are 2-D, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    br, bc = block
    pr, pc = -(-rows // br) * br, -(-cols // bc) * bc
    padded = torch.zeros((pr, pc), dtype=torch.float32, device=w.device)
    padded[:rows, :cols] = w
    blocks = padded.view(pr // br, br, pc // bc, bc)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[:, None, :, None]).clamp_(-FP8_MAX, FP8_MAX).view(pr, pc)[:rows, :cols]
    return q.to(FP8_DTYPE).contiguous(), scale.contiguous()
