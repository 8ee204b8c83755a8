"""MATLAB-compatible bicubic interpolation as a network: the "Bicubic" row of every SR benchmark table.

``network_g: {type: Bicubic, upscale: 4}`` in any test option file upscales the LR images with MATLAB's
``imresize(lr, s, 'bicubic')`` (the same result as basicsr's ``matlab_functions.imresize``), so the
Bicubic row comes from the same data, padding rules and metrics as the networks' rows. It has no
parameters, so the option file needs no ``pretrain_network_g``.

MATLAB's bicubic resize is separable. Along one axis of length n, output sample k (1-based) sits at
input coordinate ``u = k / s + (1 - 1 / s) / 2`` and is a weighted sum of the input samples around u
with Keys' cubic kernel (a = -0.5), the weights normalised to sum to 1; samples outside the image
are mirrored with the edge repeated (MATLAB's 'symmetric' padding). When shrinking (s < 1) with
antialiasing, the kernel is stretched by 1 / s. ``resize_matrix`` writes that as an (out, n) matrix,
so a resize is two matrix products, ``rows @ image @ cols^T``, batched over any leading dimensions.
"""
from __future__ import annotations

import math

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn


def cubic_kernel(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'), element-wise."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def mirror_index(index: Tensor, length: int) -> Tensor:
    """0-based indices anywhere on the integer line -> [0, length), mirrored with the edge repeated.

    -1 -> 0, -2 -> 1, length -> length - 1 (MATLAB's 'symmetric' padding, any distance from the image).
    """
    period = index.remainder(2 * length)
    return torch.where(period < length, period, 2 * length - 1 - period)


def resize_matrix(in_length: int, scale: float, antialias: bool = True) -> Tensor:
    """(ceil(in_length * scale), in_length) float64 matrix M: resizing a signal x along one axis is M @ x.

    Args:
        in_length: input samples along the axis (>= 1).
        scale: output / input size (> 0); the output has ``ceil(in_length * scale)`` samples.
        antialias: when shrinking, stretch the kernel by 1 / scale (MATLAB's default).
    """
    if in_length < 1 or not scale > 0:
        raise ValueError(f'resize_matrix: need in_length >= 1 and scale > 0, got {in_length} and {scale}')
    out_length = math.ceil(in_length * scale)
    shrink_antialias = scale < 1 and antialias
    kernel_width = 4.0 / scale if shrink_antialias else 4.0
    centre = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centre - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    index = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # 1-based, may lie outside
    distance = centre[:, None] - index
    weights = scale * cubic_kernel(distance * scale) if shrink_antialias else cubic_kernel(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    matrix.scatter_add_(1, mirror_index(index.long() - 1, in_length), weights)
    return matrix


def matlab_resize(image: Tensor, scale: float, antialias: bool = True) -> Tensor:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of (..., H, W) -> (..., ceil(sH), ceil(sW)), not clipped.

    Computed in float32 (float64 for float64 input) and returned in ``image``'s dtype.
    """
    compute_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    rows = resize_matrix(image.shape[-2], scale, antialias).to(image.device, compute_dtype)
    cols = resize_matrix(image.shape[-1], scale, antialias).to(image.device, compute_dtype)
    return (rows @ image.to(compute_dtype) @ cols.T).to(image.dtype)


@ARCH_REGISTRY.register()
class Bicubic(nn.Module):
    """MATLAB bicubic upscaling by ``upscale``: (B, C, H, W) or (C, H, W) -> (..., upscale*H, upscale*W).

    No parameters and no state_dict entries. The interpolation matrices are kept for the last few
    input sizes (test sets repeat sizes), on the input's device.
    """

    CACHED_SIZES = 8

    def __init__(self, upscale: int = 4) -> None:
        super().__init__()
        if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
            raise ValueError(f'Bicubic: upscale must be a positive integer, got {upscale!r}')
        self.upscale = upscale
        self._matrices: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def _matrix(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (length, device, dtype)
        if key not in self._matrices:
            if len(self._matrices) >= 2 * self.CACHED_SIZES:
                self._matrices.pop(next(iter(self._matrices)))
            self._matrices[key] = resize_matrix(length, self.upscale).to(device, dtype)
        return self._matrices[key]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f'Bicubic: expected (B, C, H, W) or (C, H, W) input, got shape {tuple(x.shape)}')
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        rows = self._matrix(x.shape[-2], x.device, compute_dtype)
        cols = self._matrix(x.shape[-1], x.device, compute_dtype)
        return (rows @ x.to(compute_dtype) @ cols.T).to(x.dtype)

    def extra_repr(self) -> str:
        return f'upscale={self.upscale}'
