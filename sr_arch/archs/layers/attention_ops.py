"""The attention kernel of every network here, and windowed multi-head attention built on it.

``attention`` runs ``torch.nn.functional.scaled_dot_product_attention`` with the position bias / shift mask
as one additive mask, or the plain ``softmax(q @ k^T * scale + bias) @ v`` formulation where SDPA has no
fused kernel (and under ``attention_backend('plain')``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sr_arch.archs.layers.caches import MaskScratch
from sr_arch.archs.layers.context import get_attention_backend, symbolic

#: Outside ``plain_formulation()``, an unfused attention whose score matrix would exceed this many elements
#: (64 MiB in fp32) is computed in slices of queries; every slice is exact, the peak memory stays bounded.
PLAIN_SCORES_LIMIT = 1 << 24


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, bias: Tensor | None = None) -> Tensor:
    """Softmax attention ``softmax(q @ k^T * scale + bias) @ v``.

    Args:
        q: (..., Nq, D) queries.
        k: (..., Nk, D) keys.
        v: (..., Nk, Dv) values.
        scale: multiplier of ``q @ k^T``; ``D ** -0.5`` when None.
        bias: additive term broadcastable to (..., Nq, Nk): relative position bias plus shift mask.

    Returns:
        (..., Nq, Dv)
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    backend = get_attention_backend()
    # CPU SDPA has no fused kernel for v wider than q/k (RGT's RG-SA) nor for a mask that needs a gradient
    # (a position bias in training); its math fallback is slower than the plain formula there
    mask_grad = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    fused = backend == 'sdpa' and not (q.device.type == 'cpu' and (q.shape[-1] != v.shape[-1] or mask_grad))
    if fused:
        if bias is not None:
            # a mask with fewer dims than q sends CPU SDPA to its unfused math kernel (2.8x slower for
            # HAT's windows); a broadcasting view of the same rank keeps the fused flash kernel
            bias = bias.to(q.dtype)
            bias = bias.view((1,) * (q.dim() - bias.dim()) + tuple(bias.shape))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if backend == 'plain' or symbolic(*q.shape, *k.shape):  # a graph of any size: no slicing decided by size
        return _plain_attention(q, k, v, scale, bias)
    num_scores = q.shape[:-1].numel() * k.shape[-2]
    if num_scores <= PLAIN_SCORES_LIMIT:
        return _plain_attention(q, k, v, scale, bias)
    # no fused kernel: bound the score matrix by taking the queries in slices (softmax is per query row)
    rows = max(1, PLAIN_SCORES_LIMIT * q.shape[-2] // num_scores)
    return torch.cat([_plain_attention(q[..., start:start + rows, :], k, v, scale, _query_rows(bias, start, rows))
                      for start in range(0, q.shape[-2], rows)], dim=-2)


def _plain_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


def _query_rows(bias: Tensor | None, start: int, rows: int) -> Tensor | None:
    """The rows of a (..., Nq or 1, Nk) additive mask that belong to queries ``start:start + rows``."""
    if bias is None or bias.dim() < 2 or bias.shape[-2] == 1:
        return bias
    return bias[..., start:start + rows, :]


def add_shift_mask(bias: Tensor, shift_mask: Tensor, scratch: MaskScratch | None = None) -> Tensor:
    """Position bias plus shift mask as one additive attention mask.

    Args:
        bias: (heads, N, N) position bias.
        shift_mask: (nW, N, N) shifted-window mask.
        scratch: where to write the sum when no autograd graph can keep it (see ``MaskScratch``).

    Returns:
        (nW * heads, N, N), window-major.
    """
    shift_mask = shift_mask.to(bias.dtype)
    shape = (shift_mask.shape[0], *bias.shape)
    out = scratch.buffer(shape, bias) if scratch is not None else None
    if out is None:
        return (bias.unsqueeze(0) + shift_mask.unsqueeze(1)).flatten(0, 1)
    return torch.add(bias.unsqueeze(0), shift_mask.unsqueeze(1), out=out).flatten(0, 1)


def multihead_window_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor,
                               shift_mask: Tensor | None = None, scratch: MaskScratch | None = None) -> Tensor:
    """Attention inside windows, with a per-head position bias and an optional per-window shift mask.

    Args:
        q, k, v: (B*nW, heads, N, d), the windows of one image consecutive.
        scale: multiplier of ``q @ k^T``.
        bias: (heads, N, N) relative position bias.
        shift_mask: (nW, N, N) additive mask of shifted windows, or None.
        scratch: the network's ``MaskScratch`` for the bias + mask sum, if any.

    Returns:
        (B*nW, heads, N, d)
    """
    if shift_mask is None:
        return attention(q, k, v, scale, bias)
    windows, heads, n, head_dim = q.shape
    num_windows = shift_mask.shape[0]
    if windows % num_windows:
        raise ValueError(f'window attention: {windows} windows is not a multiple of the mask\'s {num_windows} '
                         'windows per image')
    mask = add_shift_mask(bias, shift_mask, scratch)  # (nW*heads, N, N)
    if windows == num_windows:  # one image: the mask lines up with the (nW, heads) batch as it is
        return attention(q, k, v, scale, mask.view(num_windows, heads, n, n))
    # several images: windows and heads share one batch axis so the mask broadcasts over the images
    batch = windows // num_windows
    q, k, v = (t.reshape(batch, num_windows * heads, n, t.shape[-1]) for t in (q, k, v))
    out = attention(q, k, v, scale, mask)
    return out.view(windows, heads, n, out.shape[-1])


def window_attention(qkv: Tensor, num_heads: int, scale: float, bias: Tensor, shift_mask: Tensor | None = None,
                     scratch: MaskScratch | None = None) -> Tensor:
    """Multi-head self attention inside windows, from packed queries, keys and values.

    q, k and v are taken as strided views of ``qkv`` (the fused CPU kernel reads them in place and writes its
    output token-major, so no head split or merge copies a tensor).

    Args:
        qkv: (B*nW, N, 3, C) windows, those of one image consecutive; the channel dim must be unit-strided.
        num_heads: heads; C must be a multiple.
        scale, bias, shift_mask, scratch: as ``multihead_window_attention``.

    Returns:
        (B*nW, N, C)
    """
    windows, n, _, c = qkv.shape
    q, k, v = qkv.view(windows, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)  # (B*nW, heads, N, d)
    out = multihead_window_attention(q, k, v, scale, bias, shift_mask, scratch)
    return out.transpose(1, 2).reshape(windows, n, c)
