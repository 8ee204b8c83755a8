"""ESRT: Efficient Super-Resolution Transformer (Lu et al., CVPRW 2022, arXiv 2108.11084).

Port of luissen/ESRT (``model/esrt.py``, ``util/transformer.py``, ``util/tools.py``) with the official
module names, so raw official state_dicts (also with DataParallel's ``module.`` prefix) load with
``strict=True``. The network takes RGB in [0, 1] (no mean shift) and has two parts:

* LCB (lightweight CNN backbone): three high-preserving blocks (HPB). Each HPB splits its features
  into a low-frequency half-resolution map, refined by ONE shared decoder applied five times, and
  the high-frequency residual, refined separately; both are fused with channel attention.
  Every residual path is weighted by a learnable scalar (``Scale``).
* LTB (lightweight transformer backbone): one efficient transformer. 3x3 neighbourhoods are
  unfolded into 288-d tokens (32 channels x 9), efficient multi-head attention (EMHA) runs inside
  horizontal bands of ``N // 4`` tokens of the row-major sequence (a fifth, short band when
  ``N % 4 != 0``, as official), then an MLP; the tokens are folded back by summing the overlaps.

Difference from the official code: memory. The official EMHA builds one (N/4)^2 score matrix per head
and band (6.6 GB at a 320x180 LR input, 106 GB at 640x360; users OOM at 1280x720 output, issue #14).
Here large bands go through ``layers.attention`` (``scaled_dot_product_attention``, which on CPU
never builds the score matrix), so memory grows linearly with the image; small bands (score matrices
of at most ``EXACT_SCORES_LIMIT`` elements, e.g. one 48x48 LR patch) use the official formula,
bit-identical to the official code. The two differ only by
float rounding (see ``band_attention``). ``with layers.attention_backend('plain'):`` restores the
official formulation for every band (benchmarks, equivalence tests). Inputs smaller than 2x2 (the official
code fails on them) are replicate-padded and the output cropped back.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from sr_arch.archs.layers import Mlp, Upsample, attention, get_attention_backend, pad_to_size, symbolic
from sr_arch.archs.layers.channels_last import (
    fold_tokens,
    image,
    lean_eval_applies,
    pixel_linear_sum,
    pixels,
    pointwise_weight,
    to_channels_last,
    unfold_tokens,
)
from sr_arch.archs.spec import FamilySpec, Shapes, pixelshuffle_scale, shape_of

#: The published ESRT: everything is fixed by the paper but the scale (x2, x3, x4).
ESRT_VARIANTS: dict[str, dict[str, Any]] = {'ESRT': {}}

#: The LCB's 2x average pooling needs at least this many LR pixels per side; smaller inputs are padded.
MIN_INPUT_SIZE = 2

NUM_FEAT = 32  # LCB channels
PATCH_SIZE = 3  # LTB unfolds PATCH_SIZE x PATCH_SIZE neighbourhoods into tokens
TOKEN_DIM = NUM_FEAT * PATCH_SIZE * PATCH_SIZE  # 288
NUM_HEADS = 8
NUM_BANDS = 4  # EMHA feature split
LOW_FREQ_DECODER_REPEATS = 5


class Scale(nn.Module):
    """Multiplies by one learnable scalar (official ``common.Scale``; parameter name ``scale``)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ChannelAttention(nn.Module):
    """RCAN channel attention (official ``CALayer``): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_feat: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // reduction, num_feat, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class ConvReLU(nn.Module):
    """Bias-free convolution followed by ReLU (official ``BasicConv`` with its defaults)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x))


class ScaledResidualConv(nn.Module):
    """``w1 * x + w2 * conv(PReLU(conv(x)))`` through ``growth`` channels (official ``one_conv``).

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_feat: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, growth, 3, padding=1)
        self.conv1 = nn.Conv2d(growth, num_feat, 3, padding=1)
        self.relu = nn.PReLU(growth)
        self.weight1 = Scale(1)
        self.weight2 = Scale(1)

    def forward(self, x: Tensor) -> Tensor:
        if lean_eval_applies(x):  # w2 folded into conv1, w1 * x added in place
            scale = self.weight2.scale
            out = F.conv2d(self.relu(self.conv(x)), self.conv1.weight * scale, self.conv1.bias * scale, padding=1)
            return out.add_(x, alpha=float(self.weight1.scale))
        return self.weight1(x) + self.weight2(self.conv1(self.relu(self.conv(x))))


class HighFrequencyModule(nn.Module):
    """Two stacked scaled residual convs fused by 1x1 conv + channel attention (official ``one_module``).

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_feat: int):
        super().__init__()
        self.layer1 = ScaledResidualConv(num_feat, num_feat // 2)
        self.layer2 = ScaledResidualConv(num_feat, num_feat // 2)
        self.layer4 = ConvReLU(num_feat, num_feat, 3)
        self.alise = ConvReLU(2 * num_feat, num_feat, 1)
        self.atten = ChannelAttention(num_feat)
        self.weight1 = Scale(1)  # unused by the official forward, kept for state_dict compatibility
        self.weight2 = Scale(1)
        self.weight3 = Scale(1)
        self.weight4 = Scale(1)
        self.weight5 = Scale(1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        if lean_eval_applies(x):  # w2, w3 folded into the 1x1 fusion (two accumulating GEMMs, no concatenation)
            b, c, h, w = x.shape
            weight = pointwise_weight(self.alise.conv)
            weight = torch.cat([weight[:, :c] * self.weight2.scale, weight[:, c:] * self.weight3.scale], dim=1)
            fused = image(F.relu_(pixel_linear_sum([pixels(x2), pixels(x1)], weight)), b, h, w)
            fused = self.layer4(self.atten(fused))
            return fused.mul_(self.weight5.scale).add_(x, alpha=float(self.weight4.scale))
        fused = self.layer4(self.atten(self.alise(torch.cat([self.weight2(x2), self.weight3(x1)], dim=1))))
        return self.weight4(x) + self.weight5(fused)


class HighPreservingBlock(nn.Module):
    """HPB (official ``Updownblock``): separate low- and high-frequency refinement, then fusion.

    The low-frequency path is the 2x average-pooled encoding; the high-frequency path is the encoding
    minus its bilinear re-upsampling. ``decoder_low`` is one module applied five times (shared weights).
    (B, C, H, W) -> (B, C, H, W); H, W >= 2.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        self.encoder = HighFrequencyModule(num_feat)
        self.decoder_low = HighFrequencyModule(num_feat)
        self.decoder_high = HighFrequencyModule(num_feat)
        self.alise = HighFrequencyModule(num_feat)
        self.alise2 = ConvReLU(2 * num_feat, num_feat, 1)
        self.down = nn.AvgPool2d(kernel_size=2)
        self.att = ChannelAttention(num_feat)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        encoded = self.encoder(x)
        low = self.down(encoded)
        high = encoded - F.interpolate(low, size=size, mode='bilinear', align_corners=True)
        for _ in range(LOW_FREQ_DECODER_REPEATS):
            low = self.decoder_low(low)
        high = self.decoder_high(high)
        low = F.interpolate(low, size=size, mode='bilinear', align_corners=True)
        return self.alise(self.att(self.alise2(torch.cat([low, high], dim=1)))) + x


def band_bounds(num_tokens: int, num_bands: int = NUM_BANDS) -> list[tuple[int, int]]:
    """(start, end) of the official EMHA bands: chunks of ``num_tokens // num_bands`` tokens.

    ``torch.split(t, N // 4)`` semantics: when N is not a multiple of 4 a fifth band holds the rest. For a
    symbolic N (a graph for any input size) the fifth band is always there, computed from N, and empty when
    N is a multiple of 4.
    """
    band = num_tokens // num_bands
    if symbolic(num_tokens):
        return [(i * band, (i + 1) * band) for i in range(num_bands)] + [(num_bands * band, num_tokens)]
    if band == 0:
        raise ValueError(f'EMHA needs at least {num_bands} tokens (LR pixels) to form its bands, got {num_tokens}')
    return [(start, min(start + band, num_tokens)) for start in range(0, num_tokens, band)]


#: A band whose score matrix (batch x heads x band x band) has at most this many elements is computed
#: with the official formula, which is bit-identical to the official code and cheap at that size;
#: larger bands go through ``layers.attention`` (SDPA), whose memory grows only linearly.
EXACT_SCORES_LIMIT = 1 << 22


def _official_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    # the official operation order ((q @ k^T) * scale), so results match it bit for bit
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def _exact_scores(batch_heads: int, band: int) -> bool:
    """Whether a band is computed with the official formula: small bands, and every band of a graph for any
    input size (which cannot choose the formula by size; exporters turn both formulas into the same ops)."""
    return symbolic(band) or batch_heads * band ** 2 <= EXACT_SCORES_LIMIT


def _pad_last_dim(x: Tensor, multiple: int) -> Tensor:
    pad = (-x.shape[-1]) % multiple
    return F.pad(x, (0, pad)) if pad else x


def band_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, head_dim_multiple: int = 1) -> Tensor:
    """Softmax attention restricted to each EMHA band of the token sequence.

    Under ``attention_backend('plain')`` every band uses the official formula and materialises its
    (band x band) score matrix per head, exactly like the official code. Otherwise only bands up to
    ``EXACT_SCORES_LIMIT`` score elements do; larger ones use ``layers.attention`` (SDPA, which
    on CPU never builds the score matrix); they differ from the official formula only by float
    rounding.

    Args:
        q, k, v: (B, heads, N, D).
        scale: multiplier of ``q @ k^T``.
        head_dim_multiple: zero-pad D to this multiple before SDPA (exact: zero columns add nothing
            to ``q @ k^T`` and produce output columns that are cut off again).

    Returns:
        (B, heads, N, D)
    """
    batch_heads = q.shape[0] * q.shape[1]
    head_dim = q.shape[-1]
    plain = get_attention_backend() == 'plain'
    outputs = []
    for start, end in band_bounds(q.shape[-2]):
        qb, kb, vb = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        if plain or _exact_scores(batch_heads, end - start):
            outputs.append(_official_attention(qb, kb, vb, scale))
        else:
            qb, kb, vb = (_pad_last_dim(t, head_dim_multiple) for t in (qb, kb, vb))
            outputs.append(attention(qb, kb, vb, scale)[..., :head_dim])
    return torch.cat(outputs, dim=2)


class EfficientMultiHeadAttention(nn.Module):
    """EMHA (official ``EffAttention``): (B, N, dim) -> (B, N, dim).

    Tokens are reduced to dim/2 before q/k/v, attention runs per band (``band_attention``), and
    ``proj`` maps back to dim. The scale is ``(dim // heads) ** -0.5`` of the UN-reduced dim (1/6
    for dim 288), as official, although the heads are (dim/2)/heads = 18 wide.
    """

    def __init__(self, dim: int = TOKEN_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Linear(dim, dim // 2, bias=False)
        self.qkv = nn.Linear(dim // 2, dim // 2 * 3, bias=False)
        self.proj = nn.Linear(dim // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # CUDA's memory-efficient SDPA kernel wants head dims aligned to 4 in fp32 (8 in fp16/bf16);
        # for 18 PyTorch would fall back to its math kernel, which builds the score matrix.
        multiple = 8 if q.is_cuda and get_attention_backend() == 'sdpa' else 1
        out = band_attention(q, k, v, self.scale, multiple)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EfficientTransformer(nn.Module):
    """LTB transformer block (official ``MLABlock``): (B, C, H, W) -> tokens (B, H*W, 9*C).

    3x3 zero-padded neighbourhoods become tokens (channel-major, as ``nn.Unfold``), then pre-norm
    EMHA and a ReLU MLP (dim -> dim/4 -> dim), each with a residual. No positional encoding.
    """

    def __init__(self, dim: int = TOKEN_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.atten = EfficientMultiHeadAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        # nn.Linear, not TokenLinear: its rounding moves the (large) official test outputs by ~1.2e-5
        self.mlp = Mlp(in_features=dim, hidden_features=dim // 4, act_layer=nn.ReLU, linear_layer=nn.Linear)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        if lean_eval_applies(x):  # contiguous tokens in one pass (layers.channels_last.unfold_tokens), sums in place
            tokens = unfold_tokens(x, PATCH_SIZE)
            tokens = tokens.add_(self.atten(self.norm1(tokens)))
            return tokens.add_(self.mlp(self.norm2(tokens)))
        # the official 'same' padding for a 3x3 / stride-1 unfold is one zero pixel on every side
        tokens = F.unfold(x, PATCH_SIZE, padding=PATCH_SIZE // 2).transpose(1, 2)
        tokens = tokens + self.atten(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class ESRTBody(nn.Module):
    """LCB (three HPBs) + LTB (one efficient transformer) (official ``Un``): (B, C, H, W) -> same."""

    def __init__(self, num_feat: int = NUM_FEAT):
        super().__init__()
        self.encoder1 = HighPreservingBlock(num_feat)
        self.encoder2 = HighPreservingBlock(num_feat)
        self.encoder3 = HighPreservingBlock(num_feat)
        self.reduce = nn.Conv2d(3 * num_feat, num_feat, 3, padding=1)
        self.weight2 = Scale(1)
        self.weight1 = Scale(1)
        self.attention = EfficientTransformer(num_feat * PATCH_SIZE * PATCH_SIZE)
        self.alise = nn.Conv2d(num_feat, num_feat, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x1 = self.encoder1(x)
        x2 = self.encoder2(x1)
        x3 = self.encoder3(x2)
        tokens = self.attention(self.reduce(torch.cat([x1, x2, x3], dim=1)))
        if lean_eval_applies(x):  # shifted sums into a channels-last map; w2 folded into alise, w1 * x added in place
            scale = self.weight2.scale
            out = F.conv2d(fold_tokens(tokens, (h, w), PATCH_SIZE), self.alise.weight * scale, self.alise.bias * scale,
                           padding=1)
            return out.add_(x, alpha=float(self.weight1.scale))
        # fold back: every pixel receives the SUM of the 3x3 tokens that contain it (no division)
        out = F.fold(tokens.transpose(1, 2), (h, w), PATCH_SIZE, padding=PATCH_SIZE // 2)
        return self.weight1(x) + self.weight2(self.alise(out))


def _check_upscale(upscale: Any) -> int:
    valid = isinstance(upscale, int) and not isinstance(upscale, bool) and (
        upscale == 3 or (upscale >= 2 and upscale & (upscale - 1) == 0))
    if not valid:
        raise ValueError(f'ESRT: upscale must be 2, 3, 4 (or another power of two), got {upscale!r}')
    return upscale


@ARCH_REGISTRY.register()
class ESRT(nn.Module):
    """ESRT network; ``upscale`` is the only official constructor argument.

    Args:
        upscale: 2, 3 or 4 (powers of two in general).

    Shapes: (B, 3, H, W) RGB in [0, 1], any H and W -> (B, 3, upscale*H, upscale*W).
    Output = tail(reduce(body(head(x)))) + up(head(x)); the ``up`` skip branch ends in a ReLU.
    """

    def __init__(self, upscale: int = 4):
        super().__init__()
        self.upscale = _check_upscale(upscale)
        # registration order follows the official class so state_dict() lists keys in its order
        self.up = nn.Sequential(Upsample(upscale, NUM_FEAT), ConvReLU(NUM_FEAT, 3, 3))
        self.head = nn.Sequential(nn.Conv2d(3, NUM_FEAT, 3, padding=1))
        self.body = nn.Sequential(ESRTBody(NUM_FEAT))
        self.tail = nn.Sequential(Upsample(upscale, NUM_FEAT), nn.Conv2d(NUM_FEAT, 3, 3, padding=1))
        self.reduce = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, padding=1)
        self.register_load_state_dict_pre_hook(_strip_data_parallel_prefix)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'ESRT expects a (B, 3, H, W) RGB batch, got shape {tuple(x.shape)}')
        h, w = x.shape[-2:]
        x = pad_to_size(x, MIN_INPUT_SIZE, MIN_INPUT_SIZE)
        if lean_eval_applies(x):
            x = to_channels_last(x)
        feat = self.head(x)
        out = self.tail(self.reduce(self.body(feat))) + self.up(feat)
        return out[..., :h * self.upscale, :w * self.upscale]


def _strip_data_parallel_prefix(module: nn.Module, state_dict: 'OrderedDict[str, Tensor]', prefix: str,
                                *args: Any) -> None:
    """Load-state-dict pre-hook: rename ``<prefix>module.<name>`` to ``<prefix><name>`` in place.

    Official checkpoints saved from ``nn.DataParallel`` carry the prefix; ``load_state_dict`` copies
    the user's dict before running hooks, so the rename does not touch the caller's dict.
    """
    wrapped = prefix + 'module.'
    for key in [k for k in state_dict if k.startswith(wrapped)]:
        state_dict[prefix + key[len(wrapped):]] = state_dict.pop(key)


def detect_esrt(shapes: Shapes, state_dict: Any) -> dict[str, Any]:
    """Constructor kwargs of an ESRT state_dict: the scale, from the tail's pixel-shuffle convolutions."""
    num_feat = shape_of(shapes, 'head.0.weight')[0]
    shape_of(shapes, 'body.0.attention.atten.qkv.weight')
    return dict(upscale=pixelshuffle_scale(shapes, 'tail.0', num_feat))


FAMILY = FamilySpec(name='ESRT', cls=ESRT, variants=ESRT_VARIANTS, scales=(2, 3, 4), detect=detect_esrt, tiny={},
                    min_size=lambda kwargs: MIN_INPUT_SIZE)
