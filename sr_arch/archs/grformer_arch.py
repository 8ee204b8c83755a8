"""GRFormer (ACM MM 2024, arXiv 2408.07484): grouped residual self-attention for lightweight SR.

Re-implementation of ``sisrformer/GRFormer`` ``basicsr/archs/GRFormer_arch.py`` (commit 9e0c9524) with
the official constructor arguments, state_dict names and buffers, so official checkpoints load with
``strict=True`` and reproduce the official outputs. What it is:

* GRSA (grouped residual self-attention): the channels are split into two halves and q, k, v are
  ``x_g + Linear_g(x_g)`` per half (grouped residual layers instead of one QKV projection); the output
  projection is grouped too. Cosine attention with a learnable per-head logit scale (clamped at
  log 100), plus the ES-RPB bias: an MLP over a relative-coordinate table mapped to exponential space
  (``sign(t) * (1 - exp(-|t|))`` of coordinates normalised to ±3.2), squashed by ``16 * sigmoid``.
* Rectangle windows: (8, 32) for blocks 0, 1, 4, 5…, (32, 8) for blocks 2, 3, 6, 7…; odd blocks
  are shifted by half of the *configured* window, (4, 16), also where the window is (32, 8). That
  un-swapped shift is the official behaviour and kept on purpose (weights and outputs depend on it).
* Post-norm blocks (``x + norm1(attn(x))``, ``x + norm2(ffn(x))``), an FFN with a depthwise-conv
  branch, a conv after every group, one-step pixel-shuffle reconstruction.
* Any input size: reflect padding to a multiple of max(window) inside ``forward``, cropped back.

Differences from the official file (behaviour is otherwise identical):

* ``use_checkpoint`` works (the official ``checkpoint.checkpoint(blk, x)`` drops ``x_size`` and crashes).
* Attention runs through ``layers.attention`` (SDPA by default); the ES-RPB bias and shift mask
  form one additive mask and the per-head logit scale is folded into the normalised queries.
* Shift masks for sizes other than ``img_size`` are cached per size, one ``ShiftMaskCache`` shared by all
  blocks of a network (a mask at 256x256 is 64 MiB; a copy per block was most of the peak memory); in eval
  mode without gradients the ES-RPB bias is cached too (``layers.caches``: valid under EMA ``.data`` writes,
  ``load_state_dict``, ``.to()``; bypassed while tracing).
* Inputs smaller than the padding (e.g. 5x7) work: reflect padding repeats, then replicates.
* Token-wise linear layers are ``layers.TokenLinear`` and the body convolutions ``TokenConv2d``
  (``nn.Linear`` / ``nn.Conv2d`` with the same parameters and faster CPU kernels for token layouts).
* Unknown constructor arguments and unsupported ``upsampler`` / ``resi_connection`` values raise
  instead of being swallowed.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sr_arch.archs.layers import (
    DerivedTensorCache,
    DropPath,
    MaskScratch,
    MeanShift,
    ShiftMaskCache,
    TokenConv2d,
    TokenLinear,
    UpsampleOneStep,
    WindowSize,
    attention,
    gather_position_bias,
    grouped_token_linear,
    init_transformer_weights,
    multihead_window_attention,
    pad_to_multiple,
    relative_position_index,
    share_with_submodules,
    shifted_window_mask,
    tracing,
    window_partition,
    window_reverse,
)
from sr_arch.archs.layers.channels_last import (
    gelu_image,
    image,
    lean_eval_applies,
    pixel_linear,
    pixels,
    to_channels_last,
)
from sr_arch.archs.layers.window_order import WindowPlan, WindowPlanCache
from sr_arch.archs.spec import FamilySpec, Shapes, group_counts, ratio, shape_of

#: Published variants (the official repo only has the lightweight one); pass ``upscale`` separately.
GRFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    'GRFormer-light': dict(img_size=64, in_chans=3, embed_dim=60, depths=(6, 6, 6, 6), num_heads=(3, 3, 3, 3),
                           window_size=(8, 32), mlp_ratio=2.0, img_range=1.0, upsampler='pixelshuffledirect',
                           resi_connection='1conv'),
}

#: fill value of the official shift mask (SwinIR uses -100)
SHIFT_MASK_FILL = -1e9
#: the official clamp of the cosine-attention logit scale: exp(logit_scale) <= 100
LOGIT_SCALE_MAX = math.log(100.0)
#: ES-RPB: relative coordinates normalised to [-3.2, 3.2] before the exponential-space mapping
ESRPB_COORD_RANGE = 3.2
#: ES-RPB: the MLP output is squashed to (0, 16)
ESRPB_BIAS_RANGE = 16.0
_MASK_CACHE_SIZE = 8
#: ``F.normalize``'s default eps
NORMALIZE_EPS = 1e-12


def exponential_space_coords_table(window_size: WindowSize) -> Tensor:
    """ES-RPB input: relative (dy, dx) of a window, normalised to ±3.2, mapped by sign(t)*(1-exp(-|t|)).

    Returns:
        (1, 2*Wh-1, 2*Ww-1, 2) float32 table.
    """
    wh, ww = window_size
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(wh - 1, 1)
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(ww - 1, 1)
    table = torch.stack(torch.meshgrid(dy, dx, indexing='ij'), dim=-1)[None] * ESRPB_COORD_RANGE
    return torch.sign(table) * (1 - torch.exp(-table.abs()))


class GRSA(nn.Module):
    """Grouped residual self-attention inside rectangle windows, with cosine attention and ES-RPB.

    Args:
        dim: channels C (even; the two groups have C/2 each).
        window_size: (Wh, Ww).
        num_heads: attention heads (divides C).
    """

    def __init__(self, dim: int, window_size: WindowSize, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        half = dim // 2
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.ESRPB_MLP = nn.Sequential(nn.Linear(2, 128, bias=True), nn.ReLU(inplace=True),
                                       nn.Linear(128, num_heads, bias=False))
        self.register_buffer('relative_position_bias_table', exponential_space_coords_table(self.window_size))
        self.register_buffer('relative_position_index', relative_position_index(self.window_size))
        self.q1, self.q2 = TokenLinear(half, half), TokenLinear(half, half)
        self.k1, self.k2 = TokenLinear(half, half), TokenLinear(half, half)
        self.v1, self.v2 = TokenLinear(half, half), TokenLinear(half, half)
        self.proj1, self.proj2 = TokenLinear(half, half), TokenLinear(half, half)
        self.bias_cache = DerivedTensorCache()
        self.mask_scratch: MaskScratch | None = None  # set by the network (share_with_submodules)

    @staticmethod
    def _grouped(x: Tensor, first: nn.Module, second: nn.Module, residual: bool) -> Tensor:
        """``first`` on the first channel half, ``second`` on the second, concatenated (+ x when ``residual``)."""
        out = grouped_token_linear(x, (first, second))
        return x + out if residual else out

    def _compute_position_bias(self) -> Tensor:
        table = self.ESRPB_MLP(self.relative_position_bias_table).view(-1, self.num_heads)
        return ESRPB_BIAS_RANGE * torch.sigmoid(gather_position_bias(table, self.relative_position_index))

    def position_bias(self) -> Tensor:
        """ES-RPB bias, (heads, N, N) with N = Wh*Ww; kept in eval mode without autograd (``DerivedTensorCache``)."""
        sources = (*self.ESRPB_MLP.parameters(), self.relative_position_bias_table, self.relative_position_index)
        return self.bias_cache.get(sources, self._compute_position_bias, self.training)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention inside windows.

        Args:
            x: (B*nW, N, C) window tokens, windows of one image consecutive.
            mask: (nW, N, N) additive shift mask, or None for unshifted blocks.

        Returns:
            (B*nW, N, C)
        """
        bn, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q = self._grouped(x, self.q1, self.q2, residual=True).view(bn, n, heads, head_dim).transpose(1, 2)
        k = self._grouped(x, self.k1, self.k2, residual=True).view(bn, n, heads, head_dim).transpose(1, 2)
        v = self._grouped(x, self.v1, self.v2, residual=True).view(bn, n, heads, head_dim).transpose(1, 2)
        # cosine attention: the per-head temperature is folded into q so the kernel's scale is a scalar
        logit_scale = torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()
        q = F.normalize(q, dim=-1) * logit_scale
        k = F.normalize(k, dim=-1)
        out = multihead_window_attention(q, k, v, 1.0, self.position_bias(), mask, self.mask_scratch)
        out = out.transpose(1, 2).reshape(bn, n, c)
        return self._grouped(out, self.proj1, self.proj2, residual=False)

    def _dense_weights(self, pairs: Sequence[tuple[nn.Linear, nn.Linear]], residual: bool) -> tuple[Tensor, Tensor]:
        """The grouped layers ``pairs`` (first half, second half) as one dense (len(pairs)*C, C) block-diagonal
        weight and its bias; ``residual`` adds the identity to each block (``x + grouped(x)``)."""
        half = self.dim // 2
        weight = self.q1.weight.new_zeros(len(pairs), self.dim, self.dim)
        for i, (first, second) in enumerate(pairs):
            weight[i, :half, :half] = first.weight
            weight[i, half:, half:] = second.weight
        if residual:
            weight.diagonal(dim1=1, dim2=2).add_(1.0)
        bias = torch.cat([torch.cat([first.bias, second.bias]) for first, second in pairs])
        return weight.view(-1, self.dim), bias

    def lean_forward(self, tokens: Tensor, plan: WindowPlan) -> Tensor:
        """``forward`` in eval without autograd on CPU, on the tokens of whole maps in ``plan`` order.

        q, k and v come from one GEMM with the grouped residual layers as a block-diagonal weight plus identity
        (twice the multiply-adds of the grouped form, but one well-shaped GEMM instead of six tiny ones and three
        additions); q and k are normalised in one pass, the logit scale folded into q's normaliser. Attention runs
        per group of equally shaped units of the plan (whole windows, or the regions a shift cuts them into) with
        the bias of that shape and no mask (``layers.window_order``).

        Args:
            tokens: (T, C) token matrix in plan order.
            plan: the ``WindowPlan`` of the block's maps.

        Returns:
            (T, C) in plan order.
        """
        total, c = tokens.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        weight, bias = self._dense_weights(((self.q1, self.q2), (self.k1, self.k2), (self.v1, self.v2)), True)
        qkv = pixel_linear(tokens, weight, bias).view(total, 3, heads, head_dim)
        logit_scale = torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp().view(1, heads, 1)
        scales = torch.cat([logit_scale, torch.ones_like(logit_scale)])  # (2, heads, 1): q scaled, k not
        query_key = qkv[:, :2]
        norms = torch.linalg.vector_norm(query_key, dim=-1, keepdim=True).clamp_min_(NORMALIZE_EPS)
        query_key = query_key * (scales / norms)  # (T, 2, heads, head_dim)
        position_bias = self.position_bias()
        weight, bias = self._dense_weights(((self.proj1, self.proj2),), False)
        out = tokens.new_empty(total, c)
        for units in plan.units:
            rows = slice(units.start, units.start + units.tokens)
            length = units.shape[0] * units.shape[1]
            q, k = (query_key[rows, i].view(units.count, length, heads, head_dim).transpose(1, 2) for i in (0, 1))
            v = qkv[rows, 2].view(units.count, length, heads, head_dim).transpose(1, 2)
            unit_bias = position_bias
            if units.bias_index is not None:
                unit_bias = position_bias[:, units.bias_index][:, :, units.bias_index]
            attended = attention(q, k, v, 1.0, unit_bias).transpose(1, 2).reshape(units.tokens, c)
            torch.addmm(bias, attended, weight.t(), out=out[rows])
        return out


class DepthwiseConvBranch(nn.Module):
    """DW3x3 -> GELU -> DW3x3 on token sequences: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            TokenConv2d(channels, channels, 3, 1, 1, groups=channels), nn.GELU(),
            TokenConv2d(channels, channels, 3, 1, 1, groups=channels))

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *x_size)
        return self.depthwise_conv(x).flatten(2).transpose(1, 2)


class DepthwiseConvFFN(nn.Module):
    """fc1 -> GELU -> (+ depthwise-conv branch) -> fc2: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = TokenLinear(dim, hidden_dim)
        self.act = nn.GELU()
        self.dwconv = DepthwiseConvBranch(hidden_dim)
        self.fc2 = TokenLinear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        x = self.act(self.fc1(x))
        x = self.drop(x + self.dwconv(x, x_size))
        return self.drop(self.fc2(x))

    def lean_forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """``forward`` in eval without autograd on CPU: the hidden tokens stay one contiguous (B*H*W, hidden)
        matrix that the depthwise branch reads as a channels-last image; (B, H*W, C) -> (B, H*W, C)."""
        b, n, c = x.shape
        hidden = F.gelu(pixel_linear(x.reshape(-1, c), self.fc1.weight, self.fc1.bias))
        first, _, second = self.dwconv.depthwise_conv
        branch = second(gelu_image(first(image(hidden, b, *x_size))))
        return pixel_linear(hidden.add_(pixels(branch)), self.fc2.weight, self.fc2.bias).view(b, n, c)


class GRSAB(nn.Module):
    """Post-norm GRFormer block on a (B, H*W, C) token map; H and W multiples of max(window).

    Args:
        window_size: the configured (Wh, Ww); blocks with ``(index // 2) % 2 == 1`` use (Ww, Wh).
        shift_size: cyclic shift (sh, sw), applied as given (not swapped with the window).
        index: position of the block inside its group.
        img_size: (H, W) of the persistent ``attn_mask`` buffer (the official training patch size).
    """

    def __init__(self, dim: int, num_heads: int, window_size: WindowSize, shift_size: WindowSize, index: int,
                 mlp_ratio: float = 2.0, drop: float = 0.0, drop_path: float = 0.0,
                 img_size: tuple[int, int] = (64, 64)):
        super().__init__()
        self.window_size = tuple(window_size[::-1]) if (index // 2) % 2 == 1 else tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.img_size = tuple(img_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GRSA(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DepthwiseConvFFN(dim, int(dim * mlp_ratio), drop)
        # persistent, as in the official checkpoints; None (absent from the state_dict) when unshifted
        mask = shifted_window_mask(*self.img_size, self.window_size, self.shift_size, SHIFT_MASK_FILL) \
            if self.shifted else None
        self.register_buffer('attn_mask', mask)
        # the network replaces them with caches shared by all its blocks (share_with_submodules)
        self.shift_masks = ShiftMaskCache(_MASK_CACHE_SIZE, SHIFT_MASK_FILL)
        self.window_plans = WindowPlanCache(_MASK_CACHE_SIZE)

    @property
    def shifted(self) -> bool:
        return self.shift_size[0] > 0

    def shift_mask(self, h: int, w: int, like: Tensor) -> Tensor | None:
        """Additive (nW, N, N) mask for an (h, w) map; None for unshifted blocks. Cached per size."""
        if not self.shifted:
            return None
        if self.attn_mask is not None and not tracing(like) and (h, w) == self.img_size:
            return self.attn_mask
        return self.shift_masks.get(h, w, self.window_size, self.shift_size, like.device, like=like)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C); ``x_size`` = (H, W)."""
        h, w = x_size
        if lean_eval_applies(x) and x.is_contiguous():
            plan = self.window_plans.get(x.shape[0], h, w, self.window_size, self.shift_size, x.device)
            if plan is not None:
                return self._lean_forward(x, x_size, plan)
        b, _, c = x.shape
        shortcut = x
        x = x.view(b, h, w, c)
        if self.shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).flatten(1, 2)
        windows = self.attn(windows, mask=self.shift_mask(h, w, x))
        x = window_reverse(windows, self.window_size, h, w)
        if self.shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        x = shortcut + self.drop_path(self.norm1(x.reshape(b, h * w, c)))
        return x + self.drop_path(self.norm2(self.mlp(x, x_size)))

    def _lean_forward(self, x: Tensor, x_size: tuple[int, int], plan: WindowPlan) -> Tensor:
        """``forward`` in eval without autograd on CPU: roll + window partition and their inverse are one row gather
        each and the shift mask is replaced by unmasked sub-windows (``plan``); attention and FFN take their lean
        paths."""
        b, _, c = x.shape
        attended = self.attn.lean_forward(x.reshape(-1, c).index_select(0, plan.gather), plan)
        x = x + self.norm1(attended.index_select(0, plan.scatter).view(b, -1, c))
        return x + self.norm2(self.mlp.lean_forward(x, x_size))


class GRSABGroup(nn.Module):
    """``depth`` GRSABs followed by a residual 3x3 conv: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: WindowSize, mlp_ratio: float,
                 drop: float, drop_path: Sequence[float], img_size: tuple[int, int], use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        half_window = (window_size[0] // 2, window_size[1] // 2)
        self.blocks = nn.ModuleList([
            GRSAB(dim, num_heads, window_size, shift_size=(0, 0) if i % 2 == 0 else half_window, index=i,
                  mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path[i], img_size=img_size)
            for i in range(depth)])
        self.conv = TokenConv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        b, _, c = x.shape
        out = self.conv(x.transpose(1, 2).reshape(b, c, *x_size))
        if lean_eval_applies(x) and x.is_contiguous():  # tokens are a channels-last view: keep them contiguous
            return pixels(out).view(b, -1, c).add_(x)
        return x + out.flatten(2).transpose(1, 2)


def _window_pair(value: Any, name: str = 'window_size') -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 2 for v in pair):
        raise ValueError(f'GRFormer: {name} must be two integers >= 2 (height, width), got {value!r}')
    return pair


@ARCH_REGISTRY.register()
class GRFormer(nn.Module):
    """GRFormer; the official constructor arguments and defaults.

    ``qkv_bias``, ``qk_scale``, ``attn_drop_rate``, ``ape`` and ``patch_norm`` are accepted and, as in the
    official code, have no effect. ``norm_layer`` is always LayerNorm. Reconstruction is always the
    lightweight one-step pixel shuffle (``upsampler`` '' or 'pixelshuffledirect').

    Input (B, in_chans, H, W) of any size, range [0, 1]; output (B, in_chans, upscale*H, upscale*W).
    """

    def __init__(self, img_size: int = 64, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: Sequence[int] = (8, 32), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer: type[nn.Module] = nn.LayerNorm, ape: bool = False,
                 patch_norm: bool = True, use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0,
                 upsampler: str = '', resi_connection: str = '1conv', **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f'GRFormer: unknown argument(s) {sorted(kwargs)}; see GRFormer.__init__')
        window_size = _window_pair(window_size)
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f'GRFormer: depths {depths} and num_heads {num_heads} must have the same length')
        if embed_dim % 2:
            raise ValueError(f'GRFormer: embed_dim must be even (two channel groups), got {embed_dim}')
        for heads in num_heads:
            if embed_dim % heads:
                raise ValueError(f'GRFormer: embed_dim {embed_dim} is not divisible by num_heads {heads}')
        if upsampler not in ('', 'pixelshuffledirect'):
            raise ValueError(f"GRFormer: upsampler {upsampler!r} is not supported; GRFormer only has the lightweight "
                             f"one-step reconstruction ('pixelshuffledirect')")
        if resi_connection != '1conv':
            raise ValueError(f"GRFormer: resi_connection {resi_connection!r} is not supported; only '1conv'")
        if norm_layer is not nn.LayerNorm:
            raise ValueError(f'GRFormer: norm_layer must be nn.LayerNorm, got {norm_layer!r}')
        if not isinstance(upscale, int) or upscale < 1:
            raise ValueError(f'GRFormer: upscale must be a positive integer, got {upscale!r}')

        self.upscale = upscale
        self.window_size = window_size
        self.img_range = img_range
        self.upsampler = upsampler
        self.mean_shift = MeanShift(in_chans, img_range)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        image_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(GRSABGroup(embed_dim, depth, heads, window_size, mlp_ratio, drop_rate,
                                          drop_path[start:start + depth], image_size, use_checkpoint))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        self.apply(init_transformer_weights)
        self.mask_scratch = share_with_submodules(self, 'mask_scratch', MaskScratch())
        self.shift_masks = share_with_submodules(self, 'shift_masks', ShiftMaskCache(_MASK_CACHE_SIZE, SHIFT_MASK_FILL))
        self.window_plans = share_with_submodules(self, 'window_plans', WindowPlanCache(_MASK_CACHE_SIZE))

    @property
    def pad_multiple(self) -> int:
        """H and W are padded internally to a multiple of this (the longer window side)."""
        return max(self.window_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shallow features -> (B, C, H, W) deep features (H, W multiples of the window)."""
        b, c, h, w = x.shape
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        with self.mask_scratch.forward_scope(x):
            for layer in self.layers:
                x = layer(x, (h, w))
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) in [0, 1] -> (B, in_chans, upscale*H, upscale*W)."""
        if x.dim() != 4 or x.shape[1] != self.conv_first.in_channels:
            raise ValueError(f'GRFormer expects (B, {self.conv_first.in_channels}, H, W) input, got {tuple(x.shape)}')
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.pad_multiple)
        if lean_eval_applies(x):
            x = to_channels_last(x)  # the token map is then a contiguous channels-last view of the features
        x = self.conv_first(self.mean_shift(x))
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.mean_shift.inverse(self.upsample(x))
        return x[..., :h * self.upscale, :w * self.upscale]


def detect_grformer(shapes: Shapes, state_dict: Any) -> dict[str, Any]:
    """Constructor kwargs of a GRFormer state_dict (``img_size`` from the persistent shift masks)."""
    embed_dim, in_chans = shape_of(shapes, 'conv_first.weight')[:2]
    depths = group_counts(shapes, r'layers\.(\d+)\.blocks\.0\.attn\.logit_scale',
                          r'layers\.{group}\.blocks\.(\d+)\.attn\.logit_scale')
    num_heads = [shape_of(shapes, f'layers.{i}.blocks.0.attn.logit_scale')[0] for i in range(len(depths))]
    table = shape_of(shapes, 'layers.0.blocks.0.attn.relative_position_bias_table')  # (1, 2Wh-1, 2Ww-1, 2)
    kwargs = dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
        window_size=[(table[1] + 1) // 2, (table[2] + 1) // 2],
        mlp_ratio=ratio(shape_of(shapes, 'layers.0.blocks.0.mlp.fc1.weight')[0], embed_dim),
        upscale=math.isqrt(shape_of(shapes, 'upsample.0.weight')[0] // in_chans),
    )
    masks = [name for name in shapes if re.fullmatch(r'layers\.\d+\.blocks\.\d+\.attn_mask', name)]
    if masks:  # (num_windows, N, N) for a square img_size x img_size map
        num_windows, tokens = shapes[masks[0]][:2]
        kwargs['img_size'] = math.isqrt(num_windows * tokens)
    return kwargs


FAMILY = FamilySpec(
    name='GRFormer', cls=GRFormer, variants=GRFORMER_VARIANTS, scales=(2, 3, 4), detect=detect_grformer,
    tiny=dict(embed_dim=24, depths=[2], num_heads=[2], window_size=[4, 8], mlp_ratio=2),
    pad_multiple=lambda kwargs: max(_window_pair(kwargs['window_size'])),
    checkpointing_arg='use_checkpoint', group_args=('depths', 'num_heads'), model_type='GRModel',
)
