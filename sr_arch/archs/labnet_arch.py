"""LabNet (Feng et al., "Image Super-Resolution with Taylor Expansion Approximation and Large Field
Reception", TMM 2025), the synthetic blind-SR network of monakasen/TMM25.

A 3-level U-Net of ``LabNetBlock``s (46 at the official depth) between a 3x3 head and a pixel-shuffle
upsampler, plus a bicubic-upsampled copy of the input as global residual. Each block runs, on a
channel-LayerNormed input, STEA (second-order Taylor expansion approximation of self-attention,
followed by the multi-scale large field reception MLFR) in parallel with a local depthwise branch,
fuses both, applies channel attention, then a gated depthwise feed-forward network (GDFN).

State_dict names follow the official ``LabNet_STEA`` (network under ``Restorer``), so official
checkpoints load with ``strict=True``. Unlike the official code, any input size works: the body runs on
an input padded to a multiple of 4 (two pixel-unshuffle stages) and is cropped back.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from sr_arch.archs.layers import SameConv2d, pad_to_multiple, tracing
from sr_arch.archs.layers.channels_last import (
    channel_layer_norm,
    gelu_image,
    image,
    lean_eval_applies,
    pixel_linear,
    pixel_linear_sum,
    pixels,
    pointwise_weight,
    to_channels_last,
)
from sr_arch.archs.spec import CheckpointConvention, FamilySpec, Shapes, numbered, pixelshuffle_scale, shape_of

#: blocks per stage: encoder 1, encoder 2, latent, decoder 1, decoder 2, refine (hard-coded officially)
OFFICIAL_NUM_BLOCKS = (6, 8, 10, 6, 8, 8)
STAGE_NAMES = ('encoder_block1', 'encoder_block2', 'latent_block', 'decoder_block1', 'decoder_block2', 'refine_block')

#: published variants; each exists for x2, x3 and x4 (``upscale``)
LABNET_VARIANTS: dict[str, dict[str, Any]] = {
    'LabNet': dict(nf=64, num_blocks=OFFICIAL_NUM_BLOCKS),
}
LABNET_SCALES = (2, 3, 4)

#: constructor arguments of the official LabNet_STEA that have no effect there (DAN leftovers)
OFFICIAL_UNUSED_ARGS = ('nb', 'input_para', 'kernel_size', 'loop', 'pca_matrix_path')

#: the body downsamples twice by 2, so H and W of its input must be multiples of 4
BODY_MULTIPLE = 4


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) maps (NAFNet's LayerNorm2d, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if lean_eval_applies(x):
            return channel_layer_norm(x, self.weight, self.bias, self.eps)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        y = (x - mean) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def _pointwise_bottleneck(channels: int, hidden: int) -> nn.Sequential:
    """1x1 conv C->hidden, GELU, 1x1 conv hidden->C (STEA's W1, W2, W3)."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))


def _squeeze_gate(channels: int, reduction: int = 16) -> nn.Sequential:
    """Sigmoid channel gate computed from a pooled (B, C, 1, 1) descriptor (SE / RCAN style)."""
    hidden = channels // reduction
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid())


def _depthwise(channels: int, kernel: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """'Same'-padded depthwise convolution (``SameConv2d``: dilated ones run phase by phase on CPU)."""
    return SameConv2d(channels, channels, kernel, dilation=dilation, groups=channels, bias=bias)


def _lean_bottleneck(bottleneck: nn.Sequential, pix: Tensor) -> Tensor:
    """A ``_pointwise_bottleneck`` on a (P, C) pixel matrix."""
    inner = F.gelu(pixel_linear(pix, pointwise_weight(bottleneck[0]), bottleneck[0].bias))
    return pixel_linear(inner, pointwise_weight(bottleneck[2]), bottleneck[2].bias)


#: the fused eval path folds MLFR into ``conv1_last`` when a block's map has at least this many pixels per channel
#: (folding costs ~11 C^3 multiply-adds per forward and saves 4 C^2 per pixel)
FOLD_MIN_PIXELS_PER_CHANNEL = 3


class STEA(nn.Module):
    """Second-order Taylor expansion approximation of self-attention, with MLFR.

    The softmax attention map is replaced by learned stand-ins of the first and second Taylor terms:
    bottleneck MLPs (``w1``, ``w2``, ``w3``) modulated by global channel gates (``b1``, ``b2``), plus a
    value path (``wv``, ``v_dwc``). The multi-scale large field reception (MLFR) then mixes three
    dilated-9x9 / small depthwise pairs and a 1x1 bypass; ``beta`` (zero at init) scales it all, so a
    fresh STEA is ``GELU(x_ft2(x)) * x + x``. Linear in the number of pixels.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.w1 = _pointwise_bottleneck(channels, channels // 4)
        self.w2 = _pointwise_bottleneck(channels, channels // 4)
        self.w3 = _pointwise_bottleneck(channels, channels // 4)
        self.b1 = _squeeze_gate(channels)
        self.b2 = _squeeze_gate(channels)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.wv = nn.Conv2d(channels, channels, 1)
        # MLFR: the suffix of fusion_* is 9 * dilation (the official names, not the receptive field)
        self.d2dwc_9x9 = _depthwise(channels, 9, dilation=2)
        self.dwc_3x3 = _depthwise(channels, 3)
        self.fusion_18 = nn.Conv2d(2 * channels, channels, 1)
        self.d4dwc_9x9 = _depthwise(channels, 9, dilation=4)
        self.dwc_5x5 = _depthwise(channels, 5)
        self.fusion_36 = nn.Conv2d(2 * channels, channels, 1)
        self.d6dwc_9x9 = _depthwise(channels, 9, dilation=6)
        self.dwc_7x7 = _depthwise(channels, 7)
        self.fusion_54 = nn.Conv2d(2 * channels, channels, 1)
        self.bypass_1x1 = nn.Conv2d(channels, channels, 1)
        self.v_dwc = _depthwise(channels, 7)
        self.w_final = nn.Conv2d(4 * channels, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.x_ft1 = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())
        self.x_ft2 = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())

    def taylor_terms(self, x: Tensor) -> Tensor:
        """The STEA sum T1 + T2 + DWC(V) + gated identity + x, (B, C, H, W) -> (B, C, H, W)."""
        pooled = self.avg(x)
        first = self.w2(x + self.w1(x) * self.b1(pooled))
        v = self.wv(x)
        second = self.w3(x + v + first * self.b2(pooled))
        return first + second + self.v_dwc(v) + self.x_ft1(x) * x + x

    def large_field_reception(self, s: Tensor) -> Tensor:
        """MLFR: three dilated/small depthwise pairs and a 1x1 bypass, fused, plus ``s``."""
        branches = [
            self.fusion_18(torch.cat([self.d2dwc_9x9(s), self.dwc_3x3(s)], 1)),
            self.fusion_36(torch.cat([self.d4dwc_9x9(s), self.dwc_5x5(s)], 1)),
            self.fusion_54(torch.cat([self.d6dwc_9x9(s), self.dwc_7x7(s)], 1)),
            self.bypass_1x1(s),
        ]
        return self.w_final(torch.cat(branches, 1)) + s

    def forward(self, x: Tensor) -> Tensor:
        out = self.large_field_reception(self.taylor_terms(x))
        return out * self.beta + self.x_ft2(x) * x + x

    # ------------------------------------------------------------------ fused eval path (LabNetBlock.forward)

    def lean_taylor_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``taylor_terms(x)`` and ``x_ft2(x) * x + x`` on a channels-last map, as (B*H*W, C) pixel matrices.

        Every 1x1 convolution is one GEMM into its own contiguous matrix (element-wise kernels on channel slices of
        a wider matrix run 2-2.5x slower); residual sums are accumulated inside the GEMMs.
        """
        b, c, h, w = x.shape
        pix = pixels(x)
        h1, ft1, ft2 = (F.gelu(pixel_linear(pix, pointwise_weight(m), m.bias)) for m in
                        (self.w1[0], self.x_ft1[0], self.x_ft2[0]))
        v = pixel_linear(pix, pointwise_weight(self.wv), self.wv.bias)
        pooled = self.avg(x)  # (B, C, 1, 1)
        gate1, gate2 = (gate(pooled).view(b, 1, c) for gate in (self.b1, self.b2))
        t1 = pixel_linear(h1, pointwise_weight(self.w1[2]), self.w1[2].bias)
        first = _lean_bottleneck(self.w2, (t1.view(b, -1, c) * gate1).view(-1, c).add_(pix))
        mixed_in = (first.view(b, -1, c) * gate2).view(-1, c).add_(pix).add_(v)
        hidden3 = F.gelu(pixel_linear(mixed_in, pointwise_weight(self.w3[0]), self.w3[0].bias))
        rest = torch.addcmul(first.add_(pixels(self.v_dwc(image(v, b, h, w)))), ft1, pix).add_(pix)
        s = pixel_linear(hidden3, pointwise_weight(self.w3[2]), self.w3[2].bias, accumulate=rest)
        return s, torch.addcmul(pix, ft2, pix)

    def lean_field_branches(self, s: Tensor) -> list[Tensor]:
        """MLFR's six depthwise convolutions of a channels-last ``s``, as pixel matrices, in fusion order."""
        convs = (self.d2dwc_9x9, self.dwc_3x3, self.d4dwc_9x9, self.dwc_5x5, self.d6dwc_9x9, self.dwc_7x7)
        return [pixels(conv(s)) for conv in convs]

    def folded_output_weights(self, out_weight: Tensor) -> tuple[Tensor, Tensor]:
        """MLFR, the beta scale and a following linear map ``out_weight`` (O, C), folded into one matrix.

        Everything between the six depthwise convolutions and the block's ``conv1_last`` is linear:
        ``out_weight @ (beta * (w_final(cat(fusions(cat(dw pairs)), bypass(s))) + s))``. Returns the (O, 7C) weight
        that maps ``cat(six depthwise outputs, s)`` to it and the (O,) constant term.
        """
        c = self.beta.shape[1]
        scaled = out_weight * self.beta.view(1, c)  # out_weight @ diag(beta)
        through_final = scaled @ pointwise_weight(self.w_final)  # (O, 4C)
        fusions = (self.fusion_18, self.fusion_36, self.fusion_54)
        blocks = [through_final[:, i * c:(i + 1) * c] @ pointwise_weight(f) for i, f in enumerate(fusions)]
        bypass = through_final[:, 3 * c:] @ pointwise_weight(self.bypass_1x1) + scaled
        constant = through_final @ torch.cat([f.bias for f in fusions] + [self.bypass_1x1.bias]) \
            + scaled @ self.w_final.bias
        return torch.cat(blocks + [bypass], dim=1), constant

    def lean_output(self, s: Tensor, identity: Tensor, b: int, h: int, w: int) -> Tensor:
        """``forward``'s result from the pixel matrices of ``lean_taylor_terms`` (unfolded; small maps)."""
        c = s.shape[1]
        branches = self.lean_field_branches(image(s, b, h, w))
        fusions = (self.fusion_18, self.fusion_36, self.fusion_54)
        fused = [pixel_linear_sum(branches[2 * i:2 * i + 2], pointwise_weight(f), f.bias)
                 for i, f in enumerate(fusions)]
        fused.append(pixel_linear(s, pointwise_weight(self.bypass_1x1), self.bypass_1x1.bias))
        field = pixel_linear_sum(fused, pointwise_weight(self.w_final), self.w_final.bias).add_(s)
        return torch.addcmul(identity, field, self.beta.view(1, c))


class ChannelAttention(nn.Module):
    """RCAN-style channel attention with GELU: x * sigmoid(MLP(avgpool(x))), (B, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.body = _squeeze_gate(channels, reduction)
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.body(self.avg(x))


class GatedDconvFeedForward(nn.Module):
    """Restormer's GDFN (expansion 2.66, no biases), (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, expansion: float = 2.66):
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.dwconv = _depthwise(hidden * 2, 3, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)

    def lean_forward(self, x: Tensor, accumulate: Tensor | None = None) -> Tensor:
        """``forward`` of a channels-last map as a (B*H*W, C) pixel matrix, plus ``accumulate`` (a residual).

        The hidden channels are processed in blocks of at most ``GDFN_CHANNEL_BLOCK`` (a multiple of 8; the last
        block zero-padded to one): per block the gate and value projections are GEMMs into their own contiguous
        matrices, each gets its depthwise convolution, and ``project_out`` accumulates the block's share. oneDNN's
        depthwise kernel and MKL's GEMM are 1.5-3x slower on 340 or 680 channels than on such blocks, and
        element-wise kernels on channel slices of a wider matrix 2x slower than on contiguous ones.
        """
        b, _, h, w = x.shape
        hidden = self.project_out.in_channels
        pix = pixels(x)
        project_in, taps = pointwise_weight(self.project_in), self.dwconv.weight
        project_out = pointwise_weight(self.project_out)
        out = accumulate
        for start, stop in _channel_blocks(hidden):
            pad = -(stop - start) % 8  # zero channels: GELU(0) * 0 adds nothing
            gate, value = (
                pixels(F.conv2d(image(pix @ _pad_rows(project_in[i + start:i + stop], pad).t(), b, h, w),
                                _pad_rows(taps[i + start:i + stop], pad), padding=1, groups=stop - start + pad))
                for i in (0, hidden))
            gated = F.gelu(gate).mul_(value)
            part = _pad_rows(project_out[:, start:stop].t(), pad).t()
            out = gated @ part.t() if out is None else out.addmm_(gated, part.t())
        return out


#: GDFN's hidden channels are processed in blocks of at most this many (see ``GatedDconvFeedForward.lean_forward``)
GDFN_CHANNEL_BLOCK = 128


def _channel_blocks(channels: int, block: int = GDFN_CHANNEL_BLOCK) -> list[tuple[int, int]]:
    """(start, stop) of ceil(channels / block) near-equal blocks, all but the last a multiple of 8."""
    count = -(-channels // block)
    size = -(-channels // count // 8) * 8
    return [(start, min(start + size, channels)) for start in range(0, channels, size)]


def _pad_rows(weight: Tensor, rows: int) -> Tensor:
    """``weight`` with ``rows`` zero rows appended along dim 0."""
    return torch.cat([weight, weight.new_zeros(rows, *weight.shape[1:])]) if rows else weight


class LabNetBlock(nn.Module):
    """LN -> [STEA | DW3-GELU-DW3] -> 1x1 -> CA -> +x, then LN -> GDFN -> +. (B, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.STEA = STEA(channels)
        self.conv_local = nn.Sequential(_depthwise(channels, 3), nn.GELU(), _depthwise(channels, 3))
        self.conv1_last = nn.Conv2d(2 * channels, channels, 1)
        self.ca = ChannelAttention(channels)
        self.norm2 = ChannelLayerNorm(channels)
        self.gdfn = GatedDconvFeedForward(channels)

    def forward(self, x: Tensor) -> Tensor:
        if lean_eval_applies(x):
            return self._lean_forward(x)
        normed = self.norm1(x)
        mixed = self.conv1_last(torch.cat([self.STEA(normed), self.conv_local(normed)], 1))
        x = self.ca(mixed) + x
        return self.gdfn(self.norm2(x)) + x

    def _lean_forward(self, x: Tensor) -> Tensor:
        """``forward`` in eval without autograd on CPU: channels-last, 1x1 convolutions as GEMMs on pixel matrices,
        and, on maps with enough pixels to pay for it, MLFR + beta + ``conv1_last`` folded into one GEMM
        (``STEA.folded_output_weights``; 9C instead of 13C multiply-adds per pixel and channel)."""
        b, c, h, w = x.shape
        normed = self.norm1(x)
        s, identity = self.STEA.lean_taylor_terms(normed)
        local = pixels(self.conv_local[2](gelu_image(self.conv_local[0](normed))))
        last = pointwise_weight(self.conv1_last)
        if b * h * w >= FOLD_MIN_PIXELS_PER_CHANNEL * c:
            folded, constant = self.STEA.folded_output_weights(last[:, :c])
            inputs = self.STEA.lean_field_branches(image(s, b, h, w)) + [s, identity, local]
            weight = torch.cat([folded, last], dim=1)  # (C, 9C): branches, s | identity, local
            mixed = pixel_linear_sum(inputs, weight, constant + self.conv1_last.bias)
        else:
            stea = self.STEA.lean_output(s, identity, b, h, w)
            mixed = pixel_linear_sum([stea, local], last, self.conv1_last.bias)
        gate = self.ca.body(self.ca.avg(image(mixed, b, h, w))).view(b, 1, c)
        x = torch.addcmul(pixels(x).view(b, -1, c), mixed.view(b, -1, c), gate).view(-1, c)
        return image(self.gdfn.lean_forward(self.norm2(image(x, b, h, w)), accumulate=x), b, h, w)


class _Resample(nn.Module):
    """3x3 conv then pixel-(un)shuffle by 2; holds ``body`` like the official Unet(Down|Up)sample."""

    def __init__(self, channels: int, down: bool):
        super().__init__()
        if down:  # C -> C/2 -> unshuffle -> 2C at half resolution
            self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False),
                                      nn.PixelUnshuffle(2))
        else:  # C -> 2C -> shuffle -> C/2 at double resolution
            self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _stage(channels: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[LabNetBlock(channels) for _ in range(num_blocks)])


def _pixel_shuffle_upsampler(nf: int, scale: int) -> nn.Sequential:
    """x4: two (conv, shuffle x2) steps; other scales: one (conv, shuffle xs); then conv nf -> 3."""
    if scale == 4:
        layers: list[nn.Module] = [nn.Conv2d(nf, nf * 4, 3, padding=1), nn.PixelShuffle(2),
                                   nn.Conv2d(nf, nf * 4, 3, padding=1), nn.PixelShuffle(2)]
    else:
        layers = [nn.Conv2d(nf, nf * scale ** 2, 3, padding=1), nn.PixelShuffle(scale)]
    return nn.Sequential(*layers, nn.Conv2d(nf, 3, 3, padding=1))


def bicubic_residual(x: Tensor, scale: int, antialias: bool = True) -> Tensor:
    """The official global residual: torchvision ``Resize(BICUBIC)`` of the LR, clamped to [0, 1].

    torchvision >= 0.17 resizes tensors with ``antialias=True``, which for bicubic means PIL's a=-0.5
    cubic (this is what the golden vectors hold). The official environment (torchvision 0.12) did not
    antialias tensors, i.e. plain ``F.interpolate`` bicubic with a=-0.75: pass ``antialias=False`` to
    reproduce networks trained there. While tracing (ONNX and other exports, ``torch.compile``) the same
    numbers come from ``bicubic_upscale_by_convolution``, which exporters can translate.

    Shapes: (B, C, H, W) -> (B, C, scale*H, scale*W).
    """
    if tracing(x):
        return bicubic_upscale_by_convolution(x, scale, antialias).clamp(0, 1)
    size = (x.shape[-2] * scale, x.shape[-1] * scale)
    return F.interpolate(x, size=size, mode='bicubic', align_corners=False, antialias=antialias).clamp(0, 1)


#: the bicubic taps of one output pixel lie within this many input pixels of its source pixel (a 5x5 kernel)
_BICUBIC_REACH = 2


def _cubic(distance: float, a: float) -> float:
    """Keys' cubic convolution kernel with parameter ``a`` at ``distance`` (0 from 2 on)."""
    d = abs(distance)
    if d < 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((d - 5) * d + 8) * d * a - 4 * a
    return 0.0


def bicubic_phase_weights(scale: int, antialias: bool) -> Tensor:
    """(scale, 5) float64: the 1-D weights of input pixels i-2 .. i+2 for output pixel ``scale * i + phase``.

    For an integer upscale they depend only on the phase. ``antialias=False`` is ``F.interpolate``'s bicubic
    (a = -0.75, source ``(o + 0.5) / scale - 0.5``, border pixels repeated); ``antialias=True`` is its
    antialiased (PIL) bicubic (a = -0.5, weights ``cubic(j + 0.5 - (o + 0.5) / scale)``, renormalised where
    the border cuts taps off: see ``bicubic_upscale_by_convolution``).
    """
    rows = []
    for phase in range(scale):
        if antialias:
            centre = (phase + 0.5) / scale
            rows.append([_cubic(offset + 0.5 - centre, -0.5) for offset in range(-_BICUBIC_REACH, _BICUBIC_REACH + 1)])
        else:
            source = (phase + 0.5) / scale - 0.5
            first = math.floor(source) - 1  # offset of the leftmost of the four taps
            t = source - math.floor(source)
            taps = {first + k: _cubic(t + 1 - k, -0.75) for k in range(4)}
            rows.append([taps.get(offset, 0.0) for offset in range(-_BICUBIC_REACH, _BICUBIC_REACH + 1)])
    weights = torch.tensor(rows, dtype=torch.float64)
    return weights / weights.sum(dim=1, keepdim=True)


def bicubic_upscale_by_convolution(x: Tensor, scale: int, antialias: bool) -> Tensor:
    """``F.interpolate(x, scale * size, mode='bicubic', antialias=antialias)`` as pad + depthwise conv + pixel
    shuffle, ops every ONNX exporter translates (no branch on the input size, so any size works).

    One 5x5 kernel per output phase (outer product of ``bicubic_phase_weights``). Without antialias the border
    pixels repeat (replicate padding). With antialias the taps the border cuts off are dropped and the rest
    renormalised: zero padding, divided by the same convolution of an all-ones image. Equal to
    ``F.interpolate`` up to float rounding (~1e-7).

    Shapes: (B, C, H, W) -> (B, C, scale*H, scale*W).
    """
    channels = x.shape[1]
    weights = bicubic_phase_weights(scale, antialias)
    kernels = (weights[:, None, :, None] * weights[None, :, None, :]).reshape(scale * scale, 1, 5, 5)
    kernels = kernels.to(device=x.device, dtype=x.dtype)
    pad = (_BICUBIC_REACH,) * 4
    padded = F.pad(x, pad, mode='constant' if antialias else 'replicate')
    out = F.pixel_shuffle(F.conv2d(padded, kernels.repeat(channels, 1, 1, 1), groups=channels), scale)
    if antialias:
        ones = F.pad(torch.ones_like(x[:1, :1]), pad)
        out = out / F.pixel_shuffle(F.conv2d(ones, kernels), scale)
    return out


class Restorer(nn.Module):
    """The LabNet U-Net. (B, 3, H, W) in [0, 1], H and W multiples of 4 -> (B, 3, s*H, s*W), unclamped."""

    def __init__(self, nf: int, scale: int, num_blocks: Sequence[int], residual_antialias: bool = True):
        super().__init__()
        self.scale = scale
        self.residual_antialias = residual_antialias
        n_en1, n_en2, n_latent, n_de1, n_de2, n_refine = num_blocks
        self.head = nn.Conv2d(3, nf, 3, padding=1)
        self.encoder_block1 = _stage(nf, n_en1)
        self.down1 = _Resample(nf, down=True)
        self.encoder_block2 = _stage(nf * 2, n_en2)
        self.down2 = _Resample(nf * 2, down=True)
        self.latent_block = _stage(nf * 4, n_latent)
        self.up1 = _Resample(nf * 4, down=False)
        self.conv1x1_1 = nn.Conv2d(nf * 4, nf * 2, 1)
        self.decoder_block1 = _stage(nf * 2, n_de1)
        self.up2 = _Resample(nf * 2, down=False)
        # decoder 2 and refine run on cat(encoder 1 features, upsampled decoder 1 features): 2*nf channels
        self.decoder_block2 = _stage(nf * 2, n_de2)
        self.refine_block = _stage(nf * 2, n_refine)
        self.fusion = nn.Conv2d(nf * 2, nf, 3, padding=1)
        self.upscale = _pixel_shuffle_upsampler(nf, scale)

    def body(self, x: Tensor) -> Tensor:
        """Everything but the bicubic residual: (B, 3, H, W), H, W multiples of 4 -> (B, 3, sH, sW)."""
        lean = lean_eval_applies(x)
        if lean:
            x = to_channels_last(x)  # the whole body then runs channels-last (see LabNetBlock)
        en1 = self.encoder_block1(self.head(x))
        en2 = self.encoder_block2(self.down1(en1))
        latent = self.latent_block(self.down2(en2))
        de1 = self.decoder_block1(self.conv1x1_1(torch.cat([en2, self.up1(latent)], 1)))
        de2 = self.decoder_block2(torch.cat([en1, self.up2(de1)], 1))
        out = self.upscale(self.fusion(self.refine_block(de2)))
        return out.contiguous() if lean else out

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + bicubic_residual(x, self.scale, self.residual_antialias)


def _check_config(nf: Any, upscale: Any, num_blocks: Any) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(nf, bool) or not isinstance(nf, int) or nf < 16 or nf % 2:
        raise ValueError(f'LabNet: nf must be an even integer >= 16 (the channel gates squeeze nf/16 '
                         f'channels, the first downsampler halves nf), got nf={nf!r}')
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f'LabNet: upscale must be a positive integer (published: {LABNET_SCALES}), '
                         f'got upscale={upscale!r}')
    blocks = tuple(num_blocks) if isinstance(num_blocks, (list, tuple)) else None
    if blocks is None or len(blocks) != len(STAGE_NAMES) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in blocks):
        raise ValueError(f'LabNet: num_blocks must be {len(STAGE_NAMES)} non-negative integers, one per stage '
                         f'{STAGE_NAMES} (official {OFFICIAL_NUM_BLOCKS}), got num_blocks={num_blocks!r}')
    return nf, upscale, blocks


@ARCH_REGISTRY.register()
class LabNet(nn.Module):
    """LabNet (STEA) for synthetic blind SR.

    Args:
        nf: channels of the first U-Net level (doubled at each of the two lower levels). Official 64.
        upscale: scale factor; published 2, 3 and 4.
        num_blocks: blocks per stage (encoder 1, encoder 2, latent, decoder 1, decoder 2, refine);
            official ``(6, 8, 10, 6, 8, 8)``. Smaller values give small models for experiments and tests.
        residual_antialias: resize kernel of the bicubic global residual. True (default): what the
            official code computes under torchvision >= 0.17 (PIL-style a=-0.5, matches the golden
            vectors); False: what it computed under torchvision 0.12, the official training environment
            (a=-0.75), so the released LabNetx{2,3,4}.pth were presumably trained with False.
        **official_unused: ``nb``, ``input_para``, ``kernel_size``, ``loop``, ``pca_matrix_path`` of the
            official constructor are accepted and ignored with a warning (they do nothing there either).

    Shapes: (B, 3, H, W) in [0, 1], any H and W -> (B, 3, upscale*H, upscale*W), not clamped.
    """

    def __init__(self, nf: int = 64, upscale: int = 4, num_blocks: Sequence[int] = OFFICIAL_NUM_BLOCKS,
                 residual_antialias: bool = True, **official_unused: Any):
        super().__init__()
        unknown = sorted(set(official_unused) - set(OFFICIAL_UNUSED_ARGS))
        if unknown:
            raise TypeError(f'{type(self).__name__}: unknown argument(s) {unknown}; accepted: nf, upscale, num_blocks, '
                            'residual_antialias '
                            f'(and the ignored official {list(OFFICIAL_UNUSED_ARGS)})')
        if official_unused:
            warnings.warn(f'{type(self).__name__}: ignoring {sorted(official_unused)}: these official LabNet_STEA '
                          'arguments have no effect (only nf and upscale do)', UserWarning, stacklevel=2)
        nf, upscale, num_blocks = _check_config(nf, upscale, num_blocks)
        if not isinstance(residual_antialias, bool):
            raise ValueError(f'LabNet: residual_antialias must be true or false, got {residual_antialias!r}')
        self.scale = self.upscale = upscale
        self.residual_antialias = residual_antialias
        self.Restorer = Restorer(nf, upscale, num_blocks, residual_antialias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        body = self.Restorer.body(pad_to_multiple(x, BODY_MULTIPLE)[0])
        body = body[..., :h * self.scale, :w * self.scale]  # no branch on the padding: graphs stay size-free
        # the residual is taken from the unpadded input so borders match an unpadded bicubic upscale
        return body + bicubic_residual(x, self.scale, self.Restorer.residual_antialias)


@ARCH_REGISTRY.register()
class LabNet_STEA(LabNet):
    """``LabNet`` under its official class name, for option files written for monakasen/TMM25."""


def detect_labnet(shapes: Shapes, state_dict: Any) -> dict[str, Any]:
    """Constructor kwargs of a LabNet state_dict (``residual_antialias`` is in no shape: see ``FAMILY.checkpoint``)."""
    nf = shape_of(shapes, 'Restorer.head.weight')[0]
    num_blocks = [numbered(shapes, rf'Restorer\.{stage}\.(\d+)\.norm1\.weight', f'Restorer.{stage} blocks')
                  for stage in STAGE_NAMES]
    return dict(nf=nf, num_blocks=num_blocks, upscale=pixelshuffle_scale(shapes, 'Restorer.upscale', nf))


FAMILY = FamilySpec(
    name='LabNet', cls=LabNet, variants=LABNET_VARIANTS, scales=LABNET_SCALES, detect=detect_labnet,
    tiny=dict(nf=16, num_blocks=(1, 1, 1, 1, 1, 1)), pad_multiple=lambda kwargs: BODY_MULTIPLE,
    aliases=('LabNet_STEA',),
    # the released LabNetx{2,3,4}.pth were trained under torchvision 0.12: plain (a=-0.75) bicubic residual
    checkpoint=CheckpointConvention(stored_kwargs=('residual_antialias',),
                                    official_kwargs={'residual_antialias': False}),
)
