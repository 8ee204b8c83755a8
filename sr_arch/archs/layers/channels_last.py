"""Helpers for convolutional bodies kept in channels-last memory (NHWC) on CPU.

In channels-last memory a (B, C, H, W) feature map *is* a (B*H*W, C) matrix of pixels, so a 1x1 convolution is
one GEMM on it (``pixel_linear``, with the bias or a residual folded into the GEMM's accumulator) and a layer norm
over channels is one fused kernel (``channel_layer_norm``); no layout change happens between them. These are the
building blocks of the networks' lean eval paths (``lean_eval_applies``); none of them is used under
``plain_formulation()`` or while tracing.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sr_arch.archs.layers.context import lean_paths_enabled


def lean_eval_applies(x: Tensor) -> bool:
    """Whether a network may take its fused channels-last eval path for ``x``: CPU, float32, no autograd, not
    under ``plain_formulation()`` and not while tracing."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and lean_paths_enabled(x))


def to_channels_last(x: Tensor) -> Tensor:
    """(B, C, H, W) in channels-last memory (no copy when it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


def pixels(x: Tensor) -> Tensor:
    """(B, C, H, W) channels-last map -> (B*H*W, C) view (copies only when ``x`` is not channels-last)."""
    return to_channels_last(x).permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def image(matrix: Tensor, batch: int, height: int, width: int) -> Tensor:
    """(B*H*W, C) pixel matrix -> (B, C, H, W) view in channels-last memory (the inverse of ``pixels``)."""
    return matrix.view(batch, height, width, matrix.shape[-1]).permute(0, 3, 1, 2)


def gelu_image(x: Tensor) -> Tensor:
    """GELU of a channels-last (B, C, H, W) map through its pixel-matrix view (PyTorch's kernel runs ~2x faster
    on the contiguous matrix than on the same memory seen as a channels-last image)."""
    b, _, h, w = x.shape
    return image(F.gelu(pixels(x)), b, h, w)


def pointwise_weight(conv: nn.Conv2d) -> Tensor:
    """The (out, in) matrix of a 1x1, ungrouped convolution."""
    return conv.weight.view(conv.out_channels, conv.in_channels)


def pixel_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, accumulate: Tensor | None = None) -> Tensor:
    """``x @ weight.T (+ bias) (+ accumulate)`` for a (P, C) pixel matrix: a 1x1 convolution as one GEMM.

    Args:
        x: (P, C) pixels.
        weight: (O, C).
        bias: (O,) or None.
        accumulate: (P, O) added inside the GEMM (e.g. a residual), or None.

    Returns:
        (P, O), contiguous.
    """
    if accumulate is not None:
        out = torch.addmm(accumulate, x, weight.t())
        return out.add_(bias) if bias is not None else out
    if bias is not None:
        return torch.addmm(bias, x, weight.t())
    return x @ weight.t()


def pixel_linear_sum(inputs: Sequence[Tensor], weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``cat(inputs, 1) @ weight.T (+ bias)`` without the concatenation: one accumulating GEMM per input.

    Args:
        inputs: (P, C_i) pixel matrices.
        weight: (O, sum of C_i).
        bias: (O,) or None.

    Returns:
        (P, O)
    """
    start = 0
    out = None
    for x in inputs:
        part = weight[:, start:start + x.shape[1]]
        start += x.shape[1]
        out = pixel_linear(x, part, bias) if out is None else out.addmm_(x, part.t())
    if start != weight.shape[1]:
        raise ValueError(f'pixel_linear_sum: inputs have {start} channels, the weight takes {weight.shape[1]}')
    return out


def unfold_tokens(x: Tensor, kernel: int = 3) -> Tensor:
    """``F.unfold(x, kernel, padding=kernel // 2).transpose(1, 2)`` as a contiguous (B, H*W, C*k*k) tensor, written
    in one pass from shifted views of the zero-padded map (channel-major features, as ``nn.Unfold``).

    3-4x faster than unfold + transpose + copy for channels-last input; any memory format works.
    """
    b, c, h, w = x.shape
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    shifted = [padded[:, ky:ky + h, kx:kx + w] for ky in range(kernel) for kx in range(kernel)]
    return torch.stack(shifted, dim=-1).view(b, h * w, c * kernel * kernel)


def fold_tokens(tokens: Tensor, size: tuple[int, int], kernel: int = 3) -> Tensor:
    """``F.fold(tokens.transpose(1, 2), size, kernel, padding=kernel // 2)`` (overlaps summed) for contiguous
    (B, H*W, C*k*k) tokens: k*k shifted additions into a channels-last map; (B, C, H, W) channels-last out."""
    b = tokens.shape[0]
    h, w = size
    pad = kernel // 2
    channels = tokens.shape[-1] // (kernel * kernel)
    parts = tokens.view(b, h, w, channels, kernel * kernel)
    out = tokens.new_zeros(b, h, w, channels)
    for k in range(kernel * kernel):
        dy, dx = k // kernel - pad, k % kernel - pad  # the token at (y, x) adds to pixel (y + dy, x + dx)
        y0, y1, x0, x1 = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
        if y1 > y0 and x1 > x0:
            out[:, y0:y1, x0:x1] += parts[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx, :, k]
    return out.permute(0, 3, 1, 2)


def channel_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the channels of a channels-last (B, C, H, W) map, one fused kernel; channels-last out."""
    out = F.layer_norm(to_channels_last(x).permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps)
    return out.permute(0, 3, 1, 2)
