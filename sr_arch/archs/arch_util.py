"""Building blocks shared by the transformer SR networks of this package.

Everything that more than one network family needs lives here, written once:
window partition / reverse (square and rectangular windows), the Swin relative position index,
shifted-window attention masks, padding to a multiple, the DIV2K mean normalisation and the
attention kernel itself (``attention``), which runs through
``torch.nn.functional.scaled_dot_product_attention`` with the position bias / shift mask as an
additive mask, or through the plain ``softmax(q @ k^T * scale + bias) @ v`` formulation.
The backend can be switched for benchmarks and equivalence tests with ``attention_backend``.

Generic layers that basicsr already ships with the right state_dict names (``DropPath``, ``Mlp``,
``Upsample``, ``UpsampleOneStep``, ``trunc_normal_``, ``to_2tuple``) are re-exported from basicsr.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from basicsr.archs.arch_util import Upsample, to_2tuple, trunc_normal_  # noqa: F401  (re-exported)
from basicsr.archs.swinir_arch import DropPath, Mlp, UpsampleOneStep  # noqa: F401  (re-exported)

#: RGB mean of DIV2K, subtracted by HAT, RGT and GRFormer before the first convolution.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

WindowSize = tuple[int, int]

_ATTENTION_BACKENDS = ('sdpa', 'plain')
_attention_backend = 'sdpa'


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily select the attention kernel: ``'sdpa'`` (fused, default) or ``'plain'``."""
    global _attention_backend
    if name not in _ATTENTION_BACKENDS:
        raise ValueError(f'attention backend must be one of {_ATTENTION_BACKENDS}, got {name!r}')
    previous, _attention_backend = _attention_backend, name
    try:
        yield
    finally:
        _attention_backend = previous


def get_attention_backend() -> str:
    return _attention_backend


_size_caches_enabled = True


def size_caches_enabled() -> bool:
    """Whether networks may reuse shift masks / position-bias tables computed in an earlier forward."""
    return _size_caches_enabled


@contextlib.contextmanager
def plain_formulation() -> Iterator[None]:
    """Run the networks as the official code does: plain softmax attention and no size/bias caches.

    The baseline of ``benchmarks/speed.py`` and of the equivalence tests: inside this context every
    forward rebuilds its shift masks and gathered position-bias tables and attention is computed as
    ``softmax(q @ k^T * scale + bias) @ v``.
    """
    global _size_caches_enabled
    previous, _size_caches_enabled = _size_caches_enabled, False
    try:
        with attention_backend('plain'):
            yield
    finally:
        _size_caches_enabled = previous


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
    if _attention_backend == 'sdpa':
        if bias is not None:
            # a mask with fewer dims than q sends CPU SDPA to its unfused math kernel (2.8x slower for
            # HAT's windows); a broadcasting view of the same rank keeps the fused flash kernel
            bias = bias.to(q.dtype)
            bias = bias.view((1,) * (q.dim() - bias.dim()) + tuple(bias.shape))
            if bias.is_inference() and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                bias = bias.clone()  # a cache filled under inference_mode; autograd may not save it as is
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


def window_partition(x: Tensor, window_size: WindowSize) -> Tensor:
    """Split a feature map into non-overlapping windows.

    Args:
        x: (B, H, W, C), H and W multiples of the window sides.
        window_size: (window height, window width).

    Returns:
        (B * num_windows, window height, window width, C)
    """
    b, h, w, c = x.shape
    wh, ww = window_size
    x = x.view(b, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, c)


def window_reverse(windows: Tensor, window_size: WindowSize, h: int, w: int) -> Tensor:
    """Inverse of ``window_partition``: (B * num_windows, wh, ww, C) -> (B, H, W, C)."""
    wh, ww = window_size
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: WindowSize, key_window_size: WindowSize | None = None) -> Tensor:
    """Index into a (2*Wh-1)*(2*Ww-1) Swin relative position bias table.

    For cross attention between a query window and a larger key window (HAT's OCAB), pass the key
    window size: the table then has (Wh + Kh - 1) * (Ww + Kw - 1) rows.

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


class MeanShift(torch.nn.Module):
    """Subtracts (``forward``) or adds back (``inverse``) a fixed RGB mean, scaled by ``img_range``.

    The mean is a non-persistent buffer, so it follows ``.to(device)`` but is not in state_dicts
    (the official HAT/RGT/GRFormer checkpoints don't have it either).
    """

    def __init__(self, in_chans: int = 3, img_range: float = 1.0, rgb_mean: Sequence[float] = DIV2K_RGB_MEAN):
        super().__init__()
        self.img_range = img_range
        mean = torch.tensor(rgb_mean if in_chans == 3 else [0.0] * in_chans).view(1, in_chans, 1, 1)
        self.register_buffer('mean', mean, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def inverse(self, x: Tensor) -> Tensor:
        return x / self.img_range + self.mean.to(x.dtype)


def init_transformer_weights(module: torch.nn.Module) -> None:
    """Swin-style initialisation, for ``net.apply``: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, torch.nn.Linear):
        if not module.weight.is_meta:  # meta tensors hold no values, and trunc_normal_ is slow on them
            trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            torch.nn.init.constant_(module.bias, 0)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.constant_(module.bias, 0)
        torch.nn.init.constant_(module.weight, 1.0)


def build_variant(cls: type, variants: dict, name: str, upscale: int, **overrides):
    """Instantiate the published variant ``variants[name]`` of ``cls`` at ``upscale``; ``overrides`` win."""
    if name not in variants:
        raise KeyError(f'unknown {cls.__name__} variant {name!r}; known: {sorted(variants)}')
    return cls(**{**variants[name], 'upscale': upscale, **overrides})
