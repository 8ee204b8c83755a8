"""HAT: Hybrid Attention Transformer (Chen et al., "Activating More Pixels in Image Super-Resolution
Transformer", CVPR 2023; official code chxy95/HAT ``hat/archs/hat_arch.py``).

The constructor arguments, their defaults and the state_dict names (including the persistent
``relative_position_index_SA`` / ``relative_position_index_OCA`` buffers) are the official ones, so the
official option files' ``network_g`` sections and the released ``params_ema`` checkpoints load with
``strict=True``. Differences to the official module, all on purpose:

* attention runs through ``layers.attention`` (fused SDPA by default) with the relative position
  bias and the shifted-window mask added into one additive mask;
* the shift mask is cached per input size, and in eval mode (without autograd) the gathered bias
  tables are cached too (``layers.caches``: valid under EMA ``.data`` writes, ``load_state_dict``, ``.to()``;
  bypassed while tracing), instead of being rebuilt in every forward;
* any input size: the input is reflect-padded (bottom/right) to a multiple of ``window_size`` and the output
  cropped back, as the official ``HATModel`` does outside the network;
* ``use_checkpoint`` works (the official code stores it but never uses it);
* token-wise linear layers are ``layers.TokenLinear`` and the CAB / group convolutions ``TokenConv2d``
  (``nn.Linear`` / ``nn.Conv2d`` with the same parameters and faster CPU kernels for token layouts);
* bad configurations fail at construction with a message naming the argument: ``upsampler`` other than
  ``'pixelshuffle'`` (the official code silently returns the input), unknown arguments, an overlap
  window the unfold cannot tile.

Features are kept as (B, H, W, C) tokens through the body; convolutions see (B, C, H, W).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from basicsr.archs.rcan_arch import ChannelAttention
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from sr_arch.archs.layers import (
    DerivedTensorCache,
    DropPath,
    MaskScratch,
    MeanShift,
    Mlp,
    ShiftMaskCache,
    TokenConv2d,
    TokenLinear,
    attention,
    gather_position_bias,
    init_transformer_weights,
    pad_to_multiple,
    pixelshuffle_reconstruction,
    relative_position_index,
    share_with_submodules,
    to_2tuple,
    trunc_normal_unless_meta,
    window_attention,
    window_partition,
    window_reverse,
)
from sr_arch.archs.spec import FamilySpec, Shapes, group_counts, integer_divisor, pixelshuffle_scale, ratio, shape_of

#: value the official code puts on attention logits between tokens of different shifted-window regions
SHIFT_MASK_FILL = -100.0


class CAB(nn.Module):
    """Channel attention block: conv3x3 (C -> C/compress_ratio), GELU, conv3x3 back, RCAN channel attention.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            TokenConv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            TokenConv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class _TablePositionBias:
    """Mixin: a (heads, Nq, Nk) bias gathered from ``relative_position_bias_table``, kept in eval mode
    (``DerivedTensorCache``)."""

    relative_position_bias_table: nn.Parameter
    training: bool

    def position_bias(self, index: Tensor) -> Tensor:
        """(Nq, Nk) long index -> (heads, Nq, Nk) bias."""
        table = self.relative_position_bias_table
        return self.bias_cache.get((table, index), lambda: gather_position_bias(table, index), self.training)


class WindowAttention(_TablePositionBias, nn.Module):
    """Window multi-head self attention (W-MSA / SW-MSA) with a Swin relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = TokenLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = TokenLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_unless_meta(self.relative_position_bias_table)
        self.bias_cache = DerivedTensorCache()
        self.mask_scratch: MaskScratch | None = None  # set by the network (share_with_submodules)

    def forward(self, windows: Tensor, index: Tensor, shift_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            windows: (B, nW, N, C) tokens of nW windows of N = window_size**2 tokens.
            index: (N, N) relative position index.
            shift_mask: (nW, N, N) additive mask of shifted windows, or None.

        Returns:
            (B, nW, N, C)
        """
        b, nw, n, c = windows.shape
        qkv = self.qkv(windows).view(b * nw, n, 3, c)
        out = window_attention(qkv, self.num_heads, self.scale, self.position_bias(index), shift_mask,
                               self.mask_scratch).view(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention + ``conv_scale`` * CAB, then the MLP.

    (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop: float = 0.0, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, proj_drop=drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: Tensor, index: Tensor, shift_mask: Tensor | None) -> Tensor:
        b, h, w, c = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, (ws, ws)).reshape(b, -1, ws * ws, c)
        windows = self.attn(windows, index, shift_mask if shift else None)
        x = window_reverse(windows.reshape(-1, ws, ws, c), (ws, ws), h, w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(_TablePositionBias, nn.Module):
    """Overlapping cross-attention block.

    Queries come from the non-overlapping window_size**2 windows, keys and values from the
    overlapping windows of side ``int(window_size * overlap_ratio) + window_size`` centred on them
    (zero padded at the image border, as ``nn.Unfold`` does in the official code). No DropPath.
    (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, mlp_ratio: float = 2.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.norm1 = norm_layer(dim)
        self.qkv = TokenLinear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        trunc_normal_unless_meta(self.relative_position_bias_table)
        self.proj = TokenLinear(dim, dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.bias_cache = DerivedTensorCache()

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        pad = (ows - ws) // 2
        shortcut = x
        qkv = self.qkv(self.norm1(x))
        q = window_partition(qkv[..., :c], (ws, ws)).reshape(-1, ws * ws, heads, c // heads).transpose(1, 2)
        kv = F.pad(qkv[..., c:], (0, 0, pad, pad, pad, pad))  # (B, H + 2p, W + 2p, 2C)
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)  # (B, H/ws, W/ws, 2C, ows, ows)
        kv = kv.permute(0, 1, 2, 4, 5, 3).reshape(-1, ows * ows, 2, heads, c // heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B * nW, heads, ows**2, C/heads)
        out = attention(q, k, v, self.scale, self.position_bias(index))
        out = out.transpose(1, 2).reshape(-1, ws, ws, c)
        x = self.proj(window_reverse(out, (ws, ws), h, w)) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The blocks of one RHAG: ``depth`` HABs (every second one shifted), then one OCAB.

    (B, H, W, C) -> (B, H, W, C). With ``use_checkpoint`` each block is recomputed in the backward
    pass instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, shift_size: int,
                 compress_ratio: int, squeeze_factor: int, conv_scale: float, overlap_ratio: float,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 drop_path: Sequence[float] | float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            HAB(dim, num_heads, window_size, 0 if i % 2 == 0 else shift_size, compress_ratio, squeeze_factor,
                conv_scale, mlp_ratio, qkv_bias, qk_scale, drop,
                drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path, norm_layer=norm_layer)
            for i in range(depth)
        ])
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale, mlp_ratio,
                                 norm_layer)

    def _run(self, block: nn.Module, *args: Any) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, index_sa: Tensor, index_oca: Tensor, shift_mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = self._run(block, x, index_sa, shift_mask)
        return self._run(self.overlap_attn, x, index_oca)


class RHAG(nn.Module):
    """Residual hybrid attention group: AttenBlocks, conv3x3 (or identity), plus the group input.

    (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, resi_connection: str = '1conv', **blocks_kwargs: Any):
        super().__init__()
        self.residual_group = AttenBlocks(dim=dim, **blocks_kwargs)
        self.conv = TokenConv2d(dim, dim, 3, 1, 1) if resi_connection == '1conv' else nn.Identity()

    def forward(self, x: Tensor, index_sa: Tensor, index_oca: Tensor, shift_mask: Tensor | None) -> Tensor:
        y = self.residual_group(x, index_sa, index_oca, shift_mask)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


class PatchEmbed(nn.Module):
    """The official PatchEmbed with patch_size 1: (B, H, W, C) tokens, optionally layer-normalised."""

    def __init__(self, embed_dim: int, norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.norm is not None else x


def oca_relative_position_index(window_size: int, overlap_win_size: int) -> Tensor:
    """Relative position index of OCAB, exactly the official ``calculate_rpi_oca`` values.

    The official index measures key minus query (Swin measures query minus key) and starts at an
    offset that leaves negative entries, which index the table from its end. With
    L = window_size + overlap_win_size - 1 it equals ``window_size * (L + 1)`` minus the Swin index.

    Returns:
        (window_size**2, overlap_win_size**2) long tensor.
    """
    side = window_size + overlap_win_size - 1
    swin = relative_position_index((window_size, window_size), (overlap_win_size, overlap_win_size))
    return window_size * (side + 1) - swin


@ARCH_REGISTRY.register()
class HAT(nn.Module):
    """Hybrid Attention Transformer. (B, in_chans, H, W) in [0, 1] -> (B, in_chans, upscale*H, upscale*W).

    Any H and W: the input is reflect-padded to a multiple of ``window_size`` and the output cropped back.
    Arguments are the official ones; ``FAMILY.variants`` holds the published configurations. ``img_size``/``patch_size``
    only decide ``ape``'s embedding size and the official small-image rule (``img_size`` equal to the
    window disables shifted windows; smaller is rejected, the official code crashes there).
    ``norm_layer`` is a callable ``dim -> module``. ``attn_drop_rate`` must be 0 (the fused attention
    has no dropout; no official configuration uses it).
    """

    def __init__(self, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False, upscale: int = 2,
                 img_range: float = 1.0, upsampler: str = '', resi_connection: str = '1conv', **kwargs: Any):
        super().__init__()
        patches_resolution = [s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size))]
        _check_arguments(embed_dim, depths, num_heads, window_size, overlap_ratio, attn_drop_rate, upscale,
                         upsampler, resi_connection, patches_resolution, kwargs)
        self.window_size = window_size
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.upscale = upscale
        self.upsampler = upsampler
        self.img_range = img_range
        self.ape = ape
        self.patches_resolution = patches_resolution
        # the official rule: an img_size no larger than the window turns the shifted windows off
        shift_size = 0 if min(patches_resolution) <= window_size else window_size // 2
        self.shift_size = shift_size
        self.shift_masks = ShiftMaskCache(capacity=1, fill=SHIFT_MASK_FILL)

        self.register_buffer('relative_position_index_SA', relative_position_index((window_size, window_size)))
        self.register_buffer('relative_position_index_OCA',
                             oca_relative_position_index(window_size, self.overlap_win_size))
        self.mean_shift = MeanShift(in_chans, img_range)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, patches_resolution[0] * patches_resolution[1],
                                                               embed_dim))
            trunc_normal_unless_meta(self.absolute_pos_embed)
        self.pos_drop = nn.Dropout(p=drop_rate)

        drop_path_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu')]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(RHAG(
                dim=embed_dim, resi_connection=resi_connection, depth=depth, num_heads=num_heads[i],
                window_size=window_size, shift_size=shift_size, compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor, conv_scale=conv_scale, overlap_ratio=overlap_ratio,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                drop_path=drop_path_rates[start:start + depth], norm_layer=norm_layer, use_checkpoint=use_checkpoint))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == '1conv' else nn.Identity()

        self.conv_before_upsample, self.upsample, self.conv_last = pixelshuffle_reconstruction(
            embed_dim, in_chans, upscale)
        self.apply(init_transformer_weights)
        self.mask_scratch = share_with_submodules(self, 'mask_scratch', MaskScratch())

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'absolute_pos_embed'}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {'relative_position_bias_table'}

    def check_input_size(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.conv_first.in_channels:
            raise ValueError(f'HAT expects a (B, {self.conv_first.in_channels}, H, W) batch, got {tuple(x.shape)}')
        h, w = x.shape[-2:]
        if self.ape and [h + (-h) % self.window_size, w + (-w) % self.window_size] != self.patches_resolution:
            raise ValueError(f'HAT with ape=True only accepts inputs of img_size {tuple(self.patches_resolution)} '
                             f'(after padding to a multiple of window_size {self.window_size}), got {h}x{w}')

    def forward_features(self, x: Tensor) -> Tensor:
        """Deep features: (B, embed_dim, H, W) -> (B, embed_dim, H, W); H, W multiples of ``window_size``."""
        b, c, h, w = x.shape
        tokens = self.patch_embed(x.permute(0, 2, 3, 1))
        if self.ape:
            tokens = tokens + self.absolute_pos_embed.view(1, h, w, c)
        tokens = self.pos_drop(tokens)
        ws, shift = (self.window_size,) * 2, (self.shift_size,) * 2
        shift_mask = self.shift_masks.get(h, w, ws, shift, x.device, like=x) if self.shift_size else None
        with self.mask_scratch.forward_scope(x):
            for layer in self.layers:
                tokens = layer(tokens, self.relative_position_index_SA, self.relative_position_index_OCA, shift_mask)
        return self.norm(tokens).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input_size(x)
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.window_size)
        x = self.conv_first(self.mean_shift(x))
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return self.mean_shift.inverse(x)[..., :h * self.upscale, :w * self.upscale]


def _check_arguments(embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                     overlap_ratio: float, attn_drop_rate: float, upscale: int, upsampler: str, resi_connection: str,
                     patches_resolution: Sequence[int], extra: dict[str, Any]) -> None:
    if extra:
        raise TypeError(f'HAT got unknown arguments {sorted(extra)}; the HAT arguments are '
                        f'{[p for p in inspect.signature(HAT).parameters if p != "kwargs"]}')
    if upsampler != 'pixelshuffle':
        raise ValueError(f"HAT: upsampler={upsampler!r} is not supported; set `upsampler: pixelshuffle` in "
                         "network_g (the only reconstruction HAT has; the official code silently returns the "
                         "input for any other value, including its default '')")
    if resi_connection not in ('1conv', 'identity'):
        raise ValueError(f"HAT: resi_connection must be '1conv' or 'identity', got {resi_connection!r}")
    if len(depths) != len(num_heads):
        raise ValueError(f'HAT: depths {list(depths)} and num_heads {list(num_heads)} must have the same length')
    bad_heads = [h for h in num_heads if embed_dim % h]
    if bad_heads:
        raise ValueError(f'HAT: embed_dim {embed_dim} is not divisible by num_heads {bad_heads}')
    if upscale < 1 or (upscale & (upscale - 1) and upscale != 3):
        raise ValueError(f'HAT: upscale must be a power of 2 or 3, got {upscale}')
    overlap = int(window_size * overlap_ratio)
    if overlap % 2:
        raise ValueError(f'HAT: window_size {window_size} with overlap_ratio {overlap_ratio} gives an overlapping '
                         f'window {window_size + overlap}, which is not window_size plus an even number of pixels; '
                         'the overlapping windows would not line up with the query windows (the official code '
                         'crashes in forward). Use e.g. window_size 16 with overlap_ratio 0.5')
    if min(patches_resolution) < window_size:
        raise ValueError(f'HAT: img_size/patch_size {tuple(patches_resolution)} is smaller than window_size '
                         f'{window_size}; the official code breaks there. Set img_size >= window_size '
                         '(img_size does not limit the input size)')
    if attn_drop_rate:
        raise ValueError(f'HAT: attn_drop_rate={attn_drop_rate} is not supported (the fused attention has no '
                         'dropout; every official configuration uses 0)')


_HAT_COMMON = dict(img_size=64, in_chans=3, window_size=16, conv_scale=0.01, overlap_ratio=0.5, mlp_ratio=2.0,
                   img_range=1.0, upsampler='pixelshuffle', resi_connection='1conv')

#: The published variants (official option files); ``upscale`` is added per scale.
#: HAT† / HAT-L† (ImageNet-pretrained) use the HAT / HAT-L architectures.
HAT_VARIANTS: dict[str, dict[str, Any]] = {
    'HAT-S': dict(embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=24, squeeze_factor=24,
                  **_HAT_COMMON),
    'HAT': dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=3, squeeze_factor=30, **_HAT_COMMON),
    'HAT-L': dict(embed_dim=180, depths=[6] * 12, num_heads=[6] * 12, compress_ratio=3, squeeze_factor=30,
                  **_HAT_COMMON),
}


def detect_hat(shapes: Shapes, state_dict: Any) -> dict[str, Any]:
    """Constructor kwargs of a HAT state_dict, from its names and shapes."""
    shape_of(shapes, 'relative_position_index_OCA')
    embed_dim, in_chans = shape_of(shapes, 'conv_first.weight')[:2]
    depths = group_counts(shapes, r'layers\.(\d+)\.residual_group\.overlap_attn\.qkv\.weight',
                          r'layers\.{group}\.residual_group\.blocks\.(\d+)\.norm1\.weight')
    block = 'layers.{}.residual_group.blocks.0.'
    num_heads = [shape_of(shapes, block.format(i) + 'attn.relative_position_bias_table')[1]
                 for i in range(len(depths))]
    window_size = math.isqrt(shape_of(shapes, 'relative_position_index_SA')[0])
    overlap_window = math.isqrt(shape_of(shapes, 'relative_position_index_OCA')[1])
    first = block.format(0)
    return dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
        overlap_ratio=ratio(overlap_window - window_size, window_size),
        compress_ratio=integer_divisor(embed_dim, shape_of(shapes, first + 'conv_block.cab.0.weight')[0]),
        squeeze_factor=integer_divisor(embed_dim, shape_of(shapes, first + 'conv_block.cab.3.attention.1.weight')[0]),
        mlp_ratio=ratio(shape_of(shapes, first + 'mlp.fc1.weight')[0], embed_dim),
        qkv_bias=first + 'attn.qkv.bias' in shapes,
        resi_connection='1conv' if 'layers.0.conv.weight' in shapes else 'identity',
        upscale=pixelshuffle_scale(shapes, 'upsample', shape_of(shapes, 'conv_before_upsample.0.weight')[0]),
    )


FAMILY = FamilySpec(
    name='HAT', cls=HAT, variants=HAT_VARIANTS, scales=(2, 3, 4), detect=detect_hat,
    tiny=dict(embed_dim=24, depths=[2], num_heads=[2], window_size=8, compress_ratio=3, squeeze_factor=4,
              mlp_ratio=2, upsampler='pixelshuffle'),
    pad_multiple=lambda kwargs: kwargs['window_size'],
    checkpointing_arg='use_checkpoint', group_args=('depths', 'num_heads'), model_type='HATModel',
)
