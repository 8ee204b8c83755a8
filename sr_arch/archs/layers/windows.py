"""Window partition / reverse, Swin relative position indices, shifted-window masks, padding to a multiple."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import to_2tuple
from torch import Tensor

from sr_arch.archs.layers.context import symbolic

WindowSize = tuple[int, int]


def window_partition(x: Tensor, window_size: WindowSize) -> Tensor:
    """Split a feature map into non-overlapping windows (one copy, also from a strided view).

    Args:
        x: (B, H, W, *C), H and W multiples of the window sides; any trailing dims.
        window_size: (window height, window width).

    Returns:
        (B * num_windows, window height, window width, *C)
    """
    b, h, w = x.shape[:3]
    wh, ww = window_size
    channels = x.shape[3:]
    x = x.view(b, h // wh, wh, w // ww, ww, *channels)
    return x.permute(0, 1, 3, 2, 4, *range(5, x.dim())).reshape(-1, wh, ww, *channels)


def window_reverse(windows: Tensor, window_size: WindowSize, h: int, w: int) -> Tensor:
    """Inverse of ``window_partition``: (B * num_windows, wh, ww, C) -> (B, H, W, C)."""
    wh, ww = window_size
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: WindowSize, key_window_size: WindowSize | None = None) -> Tensor:
    """Index into a (2*Wh-1)*(2*Ww-1) Swin relative position bias table.

    For cross attention between a query window and a larger key window (HAT's OCAB), pass the key window
    size: the table then has (Wh + Kh - 1) * (Ww + Kw - 1) rows.

    Returns:
        (Wh*Ww, Kh*Kw) long tensor.
    """
    wh, ww = window_size
    kh, kw = key_window_size if key_window_size is not None else window_size
    q_coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
    k_coords = torch.stack(torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing='ij')).flatten(1)
    relative = (q_coords[:, :, None] - k_coords[:, None, :]).permute(1, 2, 0)  # (Nq, Nk, 2)
    relative[:, :, 0] += kh - 1
    relative[:, :, 1] += kw - 1
    return relative[:, :, 0] * (ww + kw - 1) + relative[:, :, 1]


def shifted_window_mask(height: int, width: int, window_size: WindowSize, shift_size: WindowSize,
                        fill: float = -100.0, device: torch.device | None = None) -> Tensor:
    """Attention mask of the Swin shifted-window scheme for a (height, width) feature map.

    Tokens of a shifted window that come from different image regions get ``fill``; others 0.

    Returns:
        (num_windows, Wh*Ww, Wh*Ww) float tensor.
    """
    wh, ww = window_size
    sh, sw = shift_size
    region = torch.zeros((1, height, width, 1), device=device)
    count = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[:, hs, ws, :] = count
            count += 1
    region_windows = window_partition(region, window_size).reshape(-1, wh * ww)  # may be a strided view
    mask = region_windows[:, None, :] - region_windows[:, :, None]
    return mask.masked_fill(mask != 0, float(fill)).masked_fill(mask == 0, 0.0)


def pad_to_multiple(x: Tensor, multiple: int | Sequence[int], mode: str = 'reflect') -> tuple[Tensor, tuple[int, int]]:
    """Pad an image batch on the bottom and right so H and W become multiples of ``multiple``.

    Args:
        x: (B, C, H, W).
        multiple: one int for both sides or (multiple of H, multiple of W).
        mode: ``F.pad`` mode; reflect falls back to replicate where the input is too small to reflect.

    Returns:
        The padded (B, C, H', W') tensor and the (pad_h, pad_w) added.
    """
    mh, mw = to_2tuple(multiple)
    h, w = x.shape[-2:]
    if symbolic(h, w):
        return _pad_symbolic(x, mh * ((h + mh - 1) // mh), mw * ((w + mw - 1) // mw), mode)
    pad_h, pad_w = (-h) % mh, (-w) % mw
    if pad_h or pad_w:
        if mode == 'reflect' and (pad_h >= h or pad_w >= w):
            # reflect padding needs pad < size; grow by reflecting repeatedly, then replicate the rest
            while (pad_h > 0 and x.shape[-2] < h + pad_h) or (pad_w > 0 and x.shape[-1] < w + pad_w):
                cur_h, cur_w = x.shape[-2:]
                step_h = min(h + pad_h - cur_h, cur_h - 1)
                step_w = min(w + pad_w - cur_w, cur_w - 1)
                if step_h <= 0 and step_w <= 0:
                    x = F.pad(x, (0, w + pad_w - cur_w, 0, h + pad_h - cur_h), mode='replicate')
                    break
                x = F.pad(x, (0, max(step_w, 0), 0, max(step_h, 0)), mode='reflect')
        else:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (pad_h, pad_w)


def pad_to_size(x: Tensor, height: int, width: int) -> Tensor:
    """Reflect-pad (bottom/right; replicate where too small to reflect) a (B, C, H, W) batch to at least
    (height, width)."""
    h, w = x.shape[-2:]
    if symbolic(h, w, height, width):
        return _pad_symbolic(x, torch.sym_max(h, height), torch.sym_max(w, width), 'reflect')[0]
    if h >= height and w >= width:
        return x
    return pad_to_multiple(x, (height if h < height else 1, width if w < width else 1))[0]


def reflect_indices(size: int, target: int, device: torch.device | None = None) -> Tensor:
    """Source indices of a bottom/right reflect padding of ``size`` rows to ``target`` rows.

    The same rows ``pad_to_multiple``'s repeated reflection picks (the reflection of a reflection continues
    the mirror image, with period 2 * (size - 1)); a single row is replicated. Branch-free, so symbolic sizes
    stay symbolic.

    Returns:
        (target,) long tensor.
    """
    index = torch.arange(target, device=device)
    # a tensor, not a (symbolic) int: ONNX exporters translate tensor arithmetic, not Python-scalar modulo
    period = torch.full((), torch.sym_max(2 * size - 2, 1), dtype=index.dtype, device=device)
    folded = index % period
    return torch.where(folded < size, folded, period - folded)


def _pad_symbolic(x: Tensor, height: int, width: int, mode: str) -> tuple[Tensor, tuple[int, int]]:
    """Bottom/right padding of (B, C, H, W) to (height, width) >= (H, W) without branching on the sizes
    (for graphs with symbolic sizes); reflect is a gather with ``reflect_indices``, other modes are ``F.pad``."""
    h, w = x.shape[-2:]
    if mode == 'reflect':
        x = x.index_select(-2, reflect_indices(h, height, x.device))
        x = x.index_select(-1, reflect_indices(w, width, x.device))
    else:
        x = F.pad(x, (0, width - w, 0, height - h), mode=mode)
    return x, (height - h, width - w)


def gather_position_bias(table: Tensor, index: Tensor) -> Tensor:
    """A relative position bias from its table: (rows, heads) table, (Nq, Nk) long index -> (heads, Nq, Nk).

    Negative index entries (HAT's official OCA index has some) wrap around, as in the official code.
    """
    num_q, num_k = index.shape
    return table[index.reshape(-1)].view(num_q, num_k, -1).permute(2, 0, 1).contiguous()
