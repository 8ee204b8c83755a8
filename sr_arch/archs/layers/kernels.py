"""Token-wise layers with faster CPU kernels: same parameters, state_dict names and results (up to float
rounding) as ``nn.Linear`` / ``nn.Conv2d``; on other devices and dtypes, under ``plain_formulation()`` and while
tracing they are exactly those layers."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sr_arch.archs.layers.context import lean_paths_enabled


def _conv_path_applies(x: Tensor) -> bool:
    """Whether ``TokenLinear`` / ``grouped_token_linear`` may take their convolution path for ``x``."""
    return x.device.type == 'cpu' and x.dtype == torch.float32 and x.numel() > 0 and lean_paths_enabled(x)


def linear_as_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for (..., C) ``x``, computed as a 1x1 convolution: (..., C) -> (..., out)."""
    lead, channels = x.shape[:-1], x.shape[-1]
    image = x.reshape(1, lead.numel(), 1, channels).permute(0, 3, 1, 2)  # (1, C, M, 1), channels-last strides
    out = F.conv2d(image, weight.view(weight.shape[0], channels, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


class TokenLinear(nn.Linear):
    """``nn.Linear`` over the last dim of (..., C) tokens; on CPU in float32 a 1x1 convolution computes it.

    The (M, C) token matrix is viewed as a channels-last (1, C, M, 1) image, so oneDNN's convolution, which on
    CPU is about 2x faster than the GEMM behind ``nn.Linear`` for SR-transformer token matrices (1.7-2.3x
    forward and backward on the development machine; ``benchmarks/linear_kernels.py``), runs without any copy
    of a contiguous input and returns token-major output.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or not _conv_path_applies(x):
            return super().forward(x)
        return linear_as_conv1x1(x, self.weight, self.bias)


class TokenConv2d(nn.Conv2d):
    """``nn.Conv2d`` for feature maps that are views of (B, H*W, C) tokens (channels-last memory).

    On CPU the weight is handed to the convolution in channels-last memory format too, so oneDNN runs its NHWC
    kernel on the tokens in place and returns token-major output; with the default weight format PyTorch first
    copies the input to NCHW. 1.3-1.7x faster for HAT's CAB convolutions, 6-9x for depthwise ones on the
    development machine (``benchmarks/linear_kernels.py``).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != 'cpu' or not lean_paths_enabled(x):
            return super().forward(x)
        return self._conv_forward(x, self.weight.to(memory_format=torch.channels_last), self.bias)


def grouped_token_linear(x: Tensor, layers: Sequence[nn.Linear]) -> Tensor:
    """``layers[g]`` applied to the g-th of ``len(layers)`` equal channel groups of (..., C) tokens, concatenated.

    On CPU in float32 one grouped 1x1 convolution computes all groups from a channels-last view, without
    slicing copies; elsewhere each layer runs on its channel slice.
    """
    group = x.shape[-1] // len(layers)
    biases = [layer.bias for layer in layers]
    uniform_bias = all(b is None for b in biases) or all(b is not None for b in biases)
    if not (uniform_bias and _conv_path_applies(x)):
        return torch.cat([layer(x[..., g * group:(g + 1) * group]) for g, layer in enumerate(layers)], dim=-1)
    lead = x.shape[:-1]
    image = x.reshape(1, lead.numel(), 1, x.shape[-1]).permute(0, 3, 1, 2)  # (1, C, M, 1), channels-last
    weight = torch.cat([layer.weight for layer in layers])  # (sum of out features, group)
    bias = torch.cat(biases) if biases[0] is not None else None
    out = F.conv2d(image, weight.view(weight.shape[0], group, 1, 1), bias, groups=len(layers))
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


def _kept_taps(kernel: int, phase_size: int) -> tuple[int, int]:
    """(first tap, number of taps) of a ``kernel``-tap 'same' filter that can reach a ``phase_size`` image."""
    reach = min(kernel // 2, phase_size - 1)
    return kernel // 2 - reach, 2 * reach + 1


def dilated_conv_by_phases(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: tuple[int, int],
                           groups: int) -> Tensor:
    """A stride-1 'same' convolution with dilation (dh, dw), computed as an undilated one on the dh*dw phases.

    Output pixel (i, j) of a dilated convolution whose padding is ``dilation * (kernel // 2)`` only reads
    input pixels of its own phase (i mod dh, j mod dw), so the phases (the input subsampled by the
    dilation) are stacked along the batch axis and convolved without dilation, with the kernel's half
    width as padding. Taps that would only ever read padding (phases smaller than the kernel) are cut
    from the kernel. The result equals ``F.conv2d(x, weight, bias, padding=dilation * (kernel // 2),
    dilation=dilation, groups=groups)`` up to float rounding; oneDNN has no fast kernel for dilated
    depthwise convolutions (3-7x slower than this on the development machine, ``benchmarks/conv_kernels.py``).

    Args:
        x: (B, C, H, W), any memory format (channels-last input gives channels-last output).
        weight: (O, C // groups, kh, kw), kh and kw odd.

    Returns:
        (B, O, H, W)
    """
    b, c, h, w = x.shape
    dh, dw = dilation
    pad_h, pad_w = (-h) % dh, (-w) % dw
    if pad_h or pad_w:  # zeros: the convolution's own padding would read the same values there
        x = F.pad(x, (0, pad_w, 0, pad_h))
    ph, pw = (h + pad_h) // dh, (w + pad_w) // dw
    top, rows = _kept_taps(weight.shape[-2], ph)
    left, cols = _kept_taps(weight.shape[-1], pw)
    weight = weight[..., top:top + rows, left:left + cols]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last:
        phases = x.permute(0, 2, 3, 1).reshape(b, ph, dh, pw, dw, c).permute(0, 2, 4, 1, 3, 5)
        phases = phases.reshape(b * dh * dw, ph, pw, c).permute(0, 3, 1, 2)
        weight = weight.contiguous(memory_format=torch.channels_last)
    else:
        phases = x.reshape(b, c, ph, dh, pw, dw).permute(0, 3, 5, 1, 2, 4).reshape(b * dh * dw, c, ph, pw)
        weight = weight.contiguous()
    out = F.conv2d(phases, weight, bias, padding=(rows // 2, cols // 2), groups=groups)
    o = out.shape[1]
    if channels_last:
        out = out.permute(0, 2, 3, 1).reshape(b, dh, dw, ph, pw, o).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(b, ph * dh, pw * dw, o).permute(0, 3, 1, 2)
    else:
        out = out.reshape(b, dh, dw, o, ph, pw).permute(0, 3, 4, 1, 5, 2).reshape(b, o, ph * dh, pw * dw)
    return out[..., :h, :w] if pad_h or pad_w else out


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with stride 1 and 'same' padding (``dilation * (kernel // 2)``), e.g. LabNet's dilated
    depthwise convolutions: on CPU in float32 a dilated one runs as an undilated convolution of the input's
    phases (``dilated_conv_by_phases``). Same parameters and state_dict names as ``nn.Conv2d``; under
    ``plain_formulation()`` and while tracing it is exactly that layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1,
                 bias: bool = True):
        if kernel_size % 2 == 0:
            raise ValueError(f'SameConv2d: kernel_size must be odd, got {kernel_size}')
        super().__init__(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                         dilation=dilation, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if max(self.dilation) == 1 or not _conv_path_applies(x) or x.dim() != 4:
            return super().forward(x)
        return dilated_conv_by_phases(x, self.weight, self.bias, self.dilation, self.groups)


class Mlp(nn.Module):
    """fc1 -> act -> dropout -> fc2 -> dropout on (..., C) tokens (basicsr/timm ``Mlp`` names; ``TokenLinear``
    layers unless ``linear_layer`` says otherwise)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0,
                 linear_layer: type[nn.Linear] = TokenLinear):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = linear_layer(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear_layer(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
