"""RGT: Recursive Generalization Transformer for image SR (Chen et al., ICLR 2024).

State_dict names and buffers follow the official ``zhengchen1999/RGT`` ``basicsr/archs/rgt_arch.py``,
so the released ``params`` checkpoints (RGT-S / RGT, x2/x3/x4) load with ``strict=True``.

Structure: conv_first -> tokens + LayerNorm -> N x ResidualGroup -> LayerNorm -> conv_after_body
(+ shallow features) -> conv_before_upsample -> pixel shuffle -> conv_last. Each residual group
alternates two attentions:

* L-SA (even block index): rectangle-window attention; half the channels attend in (s0 x s1)
  windows, the other half in (s1 x s0) windows, each with a DynamicPosBias; some blocks shift the
  windows by half a window (the official pattern, see ``is_shifted_block``).
* RG-SA (odd block index): the feature map is reduced ``recursion_steps`` times by ONE shared
  depthwise 4x4/stride-4 conv, projected to ``dim * c_ratio`` channels and used as keys/values of a
  cross attention from every token (global context), with a depthwise conv on V (CPE).

Every block adds the block input back scaled by a learnable per-channel ``gamma`` (hybrid adaptive
integration) and uses a gated MLP (a depthwise conv on half the hidden channels gates the other half).

Deliberate differences from the official file (none changes the outputs or the weights):
attention runs through ``layers.attention`` (SDPA) with position bias and shift mask summed into
one additive mask; shift masks of sizes other than 64x64 are cached; in eval mode without autograd
the DynamicPosBias output is cached (``layers.caches``: valid under EMA ``.data`` writes,
``load_state_dict``, ``.to()``; bypassed while tracing); gradient checkpointing uses the non-reentrant
implementation; any input size works (inputs too small or too elongated for RG-SA's recursion are
reflect-padded, bottom/right, and the output cropped back, which the official code cannot do);
token-wise linear layers and the convolutions inside the residual groups are ``TokenLinear`` /
``TokenConv2d`` (same parameters, faster CPU kernels for token layouts); unknown constructor
arguments raise instead of being swallowed by ``**kwargs``.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Sequence

import torch
import torch.utils.checkpoint
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from sr_arch.archs.layers import (
    DerivedTensorCache,
    DropPath,
    MaskScratch,
    MeanShift,
    ShiftMaskCache,
    TokenConv2d,
    TokenLinear,
    attention,
    gather_position_bias,
    init_transformer_weights,
    pad_to_size,
    pixelshuffle_reconstruction,
    relative_position_index,
    share_with_submodules,
    shifted_window_mask,
    symbolic,
    tracing,
    window_attention,
    window_partition,
    window_reverse,
)
from sr_arch.archs.spec import (
    FamilySpec,
    Shapes,
    group_counts,
    pixelshuffle_scale,
    ratio,
    rectangle_from_counts,
    shape_of,
)

#: Published variants (README / options of the official repo); ``upscale`` is 2, 3 or 4.
RGT_VARIANTS: dict[str, dict[str, Any]] = {
    'RGT-S': dict(in_chans=3, img_size=64, img_range=1.0, embed_dim=180, depth=[6] * 6, num_heads=[6] * 6,
                  mlp_ratio=2, resi_connection='1conv', split_size=[8, 32], c_ratio=0.5),
    'RGT': dict(in_chans=3, img_size=64, img_range=1.0, embed_dim=180, depth=[6] * 8, num_heads=[6] * 8,
                mlp_ratio=2, resi_connection='1conv', split_size=[8, 32], c_ratio=0.5),
}

#: The official blocks build their shift masks for this resolution whatever ``img_size`` says
#: (``Block`` never receives ``reso``), so the persistent ``attn_mask_0/1`` buffers are always 64x64.
OFFICIAL_MASK_RESOLUTION = 64

#: Smallest H and W that RG-SA accepts in eval mode (one 16x16 cell after two reductions).
EVAL_MIN_INPUT_SIZE = 16

#: Keys of option files written for the official ``RGT(**kwargs)`` that carry no information here.
_IGNORED_KWARGS = {'upsampler': ('', 'pixelshuffle')}


def recursion_steps(height: int, width: int, training: bool) -> int:
    """How many times RG-SA applies its shared 4x4/stride-4 reduction to an (height, width) map.

    The official rule: ``max(int(log4(H // 4)), int(log4(W // 4)))`` in training and
    ``max(int(log4(H // 16)), int(log4(W // 16)), 2)`` in eval. Sizes for which the official code dies
    (``math domain error`` or an empty reduced map) raise a ValueError naming the size instead.
    """
    divisor = 4 if training else EVAL_MIN_INPUT_SIZE
    mode = 'training' if training else 'eval'
    if height // divisor < 1 or width // divisor < 1:
        raise ValueError(f'RG-SA needs maps of at least {divisor}x{divisor} pixels in {mode} mode, '
                         f'got {height}x{width} (H x W); RGT.forward pads its input to min_padded_size')
    steps = max(int(math.log(height // divisor, 4)), int(math.log(width // divisor, 4)))
    if not training:
        steps = max(steps, 2)  # official: eval must reduce at least as much as the 64x64 training patches
    cell = 4 ** steps
    if height // cell < 1 or width // cell < 1:
        raise ValueError(f'RGT cannot process a {height}x{width} (H x W) input in {mode} mode: its long side needs '
                         f'{steps} reductions by 4, which leave nothing of a side shorter than {cell} pixels; pad the '
                         f'short side to {cell} (RGT.forward pads its input to min_padded_size)')
    return steps


def min_padded_size(height: int, width: int, training: bool = False) -> tuple[int, int]:
    """Smallest (H', W') >= (height, width) that RGT accepts (bottom/right padding target)."""
    if symbolic(height, width) and not training:
        return _symbolic_min_padded_size(height, width)
    divisor = 4 if training else EVAL_MIN_INPUT_SIZE
    height, width = max(height, divisor), max(width, divisor)
    # the long side sets the step count; 4**steps <= long side, so padding the short side to it keeps the count
    long_side = max(height, width)
    cell = 4 ** recursion_steps(long_side, long_side, training)
    return max(height, cell), max(width, cell)


#: A graph traced for any input size (ONNX export with dynamic H and W) computes RG-SA for every eval step count
#: from 2 up to this and keeps the one the size needs: exact for sides below 16 * 4 ** (this + 1) = 16384 px.
TRACED_MAX_RECURSION_STEPS = 4

#: the largest input side a graph traced for any size computes exactly (``FAMILY.max_traced_size``)
TRACED_MAX_INPUT_SIZE = EVAL_MIN_INPUT_SIZE * 4 ** (TRACED_MAX_RECURSION_STEPS + 1) - 1


def _eval_step_threshold(steps: int) -> int:
    """The long side (after padding) from which eval-mode RG-SA reduces ``steps`` (> 2) times:
    ``int(log4(long // 16)) >= steps``."""
    return EVAL_MIN_INPUT_SIZE * 4 ** steps


def _symbolic_min_padded_size(height: int, width: int) -> tuple[int, int]:
    """``min_padded_size`` in eval mode for symbolic sizes, without branching on them: each side is at least 16,
    and at least 4 ** steps = 64 from a long side of 1024 on, 256 from 4096 on ... (``Min(1, long // threshold)``
    is 0 or 1)."""
    long_side = torch.sym_max(height, width)
    floors = [EVAL_MIN_INPUT_SIZE] + [4 ** steps * torch.sym_min(1, long_side // _eval_step_threshold(steps))
                                      for steps in range(3, TRACED_MAX_RECURSION_STEPS + 1)]
    return functools.reduce(torch.sym_max, floors, height), functools.reduce(torch.sym_max, floors, width)


def is_shifted_block(group_index: int, block_index: int) -> bool:
    """Official shift pattern of L-SA blocks: even groups shift blocks 2, 6, 10...; odd groups 0, 4, 8..."""
    if group_index % 2 == 0:
        return block_index > 0 and (block_index - 2) % 4 == 0
    return block_index % 4 == 0


#: Shift masks kept per network for sizes other than 64x64: the two branch windows of the current size
#: (masks of earlier sizes, e.g. other validation images, are dropped).
SHIFT_MASK_CACHE_SIZE = 2


class ImageToTokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C); parameter-free index 0 of the official ``before_RG`` Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


def tokens_to_image(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class DynamicPosBias(nn.Module):
    """MLP from a relative (dy, dx) offset to one bias per head (CrossFormer's DPB, no residual).

    ``dim`` is the attention width of the branch; the hidden width is ``dim // 4`` (official; it is 0
    for very narrow networks, which leaves only the last layer's bias).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.pos_dim = dim // 4
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'Initializing zero-element tensors')  # pos_dim 0 (official, narrow nets)
            self.pos_proj = nn.Linear(2, self.pos_dim)
            self.pos1 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, self.pos_dim))
            self.pos2 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, self.pos_dim))
            self.pos3 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, num_heads))

    def forward(self, offsets: Tensor) -> Tensor:
        """(M, 2) offsets -> (M, num_heads) biases."""
        if self.pos_dim == 0:
            # zero-width hidden layers leave the last bias (the same numbers; ONNX has no zero-width LayerNorm).
            # Added to zeros, not expanded: a view of a parameter made under no_grad breaks autograd hooks
            return self.pos3[-1].bias + offsets.new_zeros(offsets.shape[0], 1)
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class RectangleWindowBranch(nn.Module):
    """Attention of one L-SA branch inside (Wh x Ww) rectangles, with DynamicPosBias (official ``WindowAttention``).

    The (heads, N, N) position bias is kept in eval mode without autograd (``DerivedTensorCache``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(dim // 4, num_heads)
        wh, ww = window_size
        offsets = torch.stack(torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing='ij'))
        self.register_buffer('rpe_biases', offsets.flatten(1).transpose(0, 1).contiguous().float())
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.bias_cache = DerivedTensorCache()
        self.mask_scratch: MaskScratch | None = None  # set by the network (share_with_submodules)

    def _compute_position_bias(self) -> Tensor:
        # DPB over the ((2Wh-1)(2Ww-1), 2) offsets -> per-offset head biases, gathered to (heads, N, N)
        return gather_position_bias(self.pos(self.rpe_biases), self.relative_position_index)

    def position_bias(self) -> Tensor:
        """(heads, N, N) relative position bias, N = Wh * Ww."""
        sources = (*self.pos.parameters(), self.rpe_biases, self.relative_position_index)
        return self.bias_cache.get(sources, self._compute_position_bias, self.training)

    def forward(self, qkv: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention in windows.

        Args:
            qkv: (3, B, H, W, C) stacked q, k, v of this branch; H and W multiples of the window sides.
            mask: (num_windows, N, N) additive shift mask, or None.

        Returns:
            (B, H, W, C)
        """
        _, b, h, w, c = qkv.shape
        wh, ww = self.window_size
        n = wh * ww
        # (B, H, W, 3, C) -> (B*nW, N, 3, C): one copy, q/k/v stay packed per token
        windows = window_partition(qkv.permute(1, 2, 3, 0, 4), self.window_size)
        out = window_attention(windows.reshape(-1, n, 3, c), self.num_heads, self.scale, self.position_bias(), mask,
                               self.mask_scratch)
        out = out.view(-1, wh, ww, c)
        return window_reverse(out, self.window_size, h, w)


class RectangleWindowAttention(nn.Module):
    """L-SA: two rectangle-window branches on the two channel halves, plus a depthwise conv on V.

    Branch 0 uses (s0 x s1) windows, branch 1 (s1 x s0), each with ``num_heads // 2`` heads. q, k, v
    are zero-padded (bottom/right) to a multiple of max(split_size), as official; shifted blocks roll
    each branch by half its window and use the Swin shift mask.
    """

    def __init__(self, dim: int, num_heads: int, split_size: Sequence[int], qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, shifted: bool = False):
        super().__init__()
        self.dim = dim
        self.shifted = shifted
        self.pad_multiple = max(split_size)
        s0, s1 = split_size
        self.window_sizes = ((s0, s1), (s1, s0))
        self.qkv = TokenLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = TokenLinear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.attns = nn.ModuleList([
            RectangleWindowBranch(dim // 2, num_heads // 2, window, qk_scale=qk_scale)
            for window in self.window_sizes])
        for i, window in enumerate(self.window_sizes):
            mask = None
            if shifted:
                shift = (window[0] // 2, window[1] // 2)
                mask = shifted_window_mask(OFFICIAL_MASK_RESOLUTION, OFFICIAL_MASK_RESOLUTION, window, shift)
            self.register_buffer(f'attn_mask_{i}', mask)
        self.get_v = TokenConv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        # the network replaces it with one cache shared by all its L-SA blocks (share_with_submodules)
        self.shift_masks = ShiftMaskCache(SHIFT_MASK_CACHE_SIZE)

    def shift_mask(self, branch: int, height: int, width: int, like: Tensor) -> Tensor:
        """(num_windows, N, N) shift mask of one branch for a padded (height, width) map."""
        if not tracing(like) and height == OFFICIAL_MASK_RESOLUTION and width == OFFICIAL_MASK_RESOLUTION:
            return getattr(self, f'attn_mask_{branch}')
        window = self.window_sizes[branch]
        shift = (window[0] // 2, window[1] // 2)
        return self.shift_masks.get(height, width, window, shift, like.device, like=like)

    def _pad_to_windows(self, qkv: Tensor, height: int, width: int) -> tuple[Tensor, int, int]:
        """Zero-pad (3, B, H, W, C) bottom/right to multiples of max(split_size) (always, for symbolic sizes)."""
        m = self.pad_multiple
        if symbolic(height, width):
            padded_h, padded_w = m * ((height + m - 1) // m), m * ((width + m - 1) // m)
            return nn.functional.pad(qkv, (0, 0, 0, padded_w - width, 0, padded_h - height)), padded_h, padded_w
        pad_h, pad_w = (-height) % m, (-width) % m
        if pad_h or pad_w:
            qkv = nn.functional.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
        return qkv, height + pad_h, width + pad_w

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """(B, H*W, C) tokens -> (B, H*W, C)."""
        b, length, c = x.shape
        half = c // 2
        qkv = self.qkv(x).view(b, height, width, 3, c).permute(3, 0, 1, 2, 4)  # (3, B, H, W, C)
        local_v = self.get_v(qkv[2].permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        qkv, padded_h, padded_w = self._pad_to_windows(qkv, height, width)
        branches = []
        for i, (branch, window) in enumerate(zip(self.attns, self.window_sizes)):
            part = qkv[..., i * half:(i + 1) * half]
            if self.shifted:
                shift = (window[0] // 2, window[1] // 2)
                part = torch.roll(part, shifts=(-shift[0], -shift[1]), dims=(2, 3))
                out = branch(part, self.shift_mask(i, padded_h, padded_w, part))
                out = torch.roll(out, shifts=shift, dims=(1, 2))
            else:
                out = branch(part)
            branches.append(out[:, :height, :width].reshape(b, length, half))
        x = torch.cat(branches, dim=2) + local_v
        return self.proj_drop(self.proj(x))


class RecursiveGeneralizationAttention(nn.Module):
    """RG-SA: cross attention from every token to a recursively reduced, channel-reduced summary map.

    ``cr = int(dim * c_ratio)``; q: Linear(dim -> cr) of the tokens, k: Linear(cr -> cr) and
    v: Linear(cr -> dim) of the summary; scale ``(dim // num_heads * c_ratio) ** -0.5``; CPE is a
    depthwise 3x3 conv on V in image layout.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 proj_drop: float = 0.0, c_ratio: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.cr = int(dim * c_ratio)
        self.scale = qk_scale or (dim // num_heads * c_ratio) ** -0.5
        self.reduction1 = TokenConv2d(dim, dim, kernel_size=4, stride=4, groups=dim)  # shared by every recursion
        self.dwconv = TokenConv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.conv = TokenConv2d(dim, self.cr, kernel_size=1, stride=1)
        self.norm_act = nn.Sequential(nn.LayerNorm(self.cr), nn.GELU())
        self.q = TokenLinear(dim, self.cr, bias=qkv_bias)
        self.k = TokenLinear(self.cr, self.cr, bias=qkv_bias)
        self.v = TokenLinear(self.cr, dim, bias=qkv_bias)
        self.cpe = TokenConv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.proj = TokenLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """(B, H*W, C) tokens -> (B, H*W, C)."""
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, cr/heads)
        if symbolic(height, width) and not self.training:
            out = self._attend_any_size(q, tokens_to_image(x, height, width), height, width)
        else:
            summary = tokens_to_image(x, height, width)
            for _ in range(recursion_steps(height, width, self.training)):
                summary = self.reduction1(summary)
            out = self._attend(q, summary)
        return self.proj_drop(self.proj(out))

    def _attend(self, q: Tensor, summary: Tensor) -> Tensor:
        """Attention of the queries (B, heads, N, cr/heads) to a reduced map (B, C, h, w) -> (B, N, C)."""
        b, heads, n, _ = q.shape
        c = summary.shape[1]
        small_h, small_w = summary.shape[-2:]
        summary = self.norm_act(self.conv(self.dwconv(summary)).flatten(2).transpose(1, 2))  # (B, N', cr)
        v = self.v(summary)
        v = v + self.cpe(tokens_to_image(v, small_h, small_w)).flatten(2).transpose(1, 2)  # (B, N', C)
        k = self.k(summary).view(b, -1, heads, self.cr // heads).transpose(1, 2)
        v = v.view(b, -1, heads, c // heads).transpose(1, 2)
        out = attention(q, k, v, self.scale)  # (B, heads, N, C/heads)
        return out.transpose(1, 2).reshape(b, n, c)

    def _attend_any_size(self, q: Tensor, image: Tensor, height: int, width: int) -> Tensor:
        """``_attend`` after the eval-mode number of reductions, for symbolic sizes (one graph for every size).

        A graph cannot loop a size-dependent number of times, so it attends to the map after 2 reductions, 3, ...
        ``TRACED_MAX_RECURSION_STEPS`` and keeps, with ``torch.where``, the one ``recursion_steps`` picks for
        this size (the extra attentions have 1/16, 1/256 ... of the keys). Before each extra reduction the map
        gets 3 zero rows and columns, so even a map smaller than the 4x4 kernel yields a cell, and the result
        is cropped to ``max(side // 4, 1)``: for maps of at least 4 px (all a selected candidate sees) that is
        exactly the unpadded reduction.
        """
        summary = image
        for _ in range(2):
            summary = self.reduction1(summary)
        out = self._attend(q, summary)
        long_side = torch.full((), torch.sym_max(height, width), device=q.device)
        for steps in range(3, TRACED_MAX_RECURSION_STEPS + 1):
            small_h, small_w = summary.shape[-2:]
            reduced = self.reduction1(nn.functional.pad(summary, (0, 3, 0, 3)))
            summary = reduced[..., :torch.sym_max(small_h // 4, 1), :torch.sym_max(small_w // 4, 1)]
            out = torch.where(long_side >= _eval_step_threshold(steps), self._attend(q, summary), out)
        return out


class SpatialGate(nn.Module):
    """Gate of the MLP: the second channel half, normalised and depthwise-convolved, multiplies the first."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = TokenConv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """(B, N, 2D) -> (B, N, D)."""
        x1, x2 = x.chunk(2, dim=-1)
        x2 = self.conv(tokens_to_image(self.norm(x2), height, width)).flatten(2).transpose(1, 2)
        return x1 * x2


class GatedMLP(nn.Module):
    """fc1 -> act -> SpatialGate (halves the width) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = TokenLinear(in_features, hidden_features)
        self.act = act_layer()
        self.sg = SpatialGate(hidden_features // 2)
        self.fc2 = TokenLinear(hidden_features // 2, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        x = self.drop(self.act(self.fc1(x)))
        x = self.drop(self.sg(x, height, width))
        return self.drop(self.fc2(x))


class RGTBlock(nn.Module):
    """Pre-norm transformer block: L-SA (even index) or RG-SA (odd index), gated MLP, ``x + res * gamma``."""

    def __init__(self, dim: int, num_heads: int, group_index: int, block_index: int, split_size: Sequence[int],
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, c_ratio: float = 0.5, layerscale_value: float = 1e-4):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if block_index % 2 == 0:
            self.attn = RectangleWindowAttention(dim, num_heads, split_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                                 drop=drop, shifted=is_shifted_block(group_index, block_index))
        else:
            self.attn = RecursiveGeneralizationAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                                         proj_drop=drop, c_ratio=c_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = GatedMLP(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.norm2 = norm_layer(dim)
        self.gamma = nn.Parameter(layerscale_value * torch.ones(dim))  # hybrid adaptive integration

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        height, width = x_size
        res = x
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        x = x + self.drop_path(self.mlp(self.norm2(x), height, width))
        return x + res * self.gamma


class RGTResidualGroup(nn.Module):
    """``depth`` RGT blocks, a 3x3 conv ('1conv') or conv bottleneck ('3conv'), plus the group input."""

    def __init__(self, dim: int, num_heads: int, depth: int, group_index: int, split_size: Sequence[int],
                 drop_paths: Sequence[float], use_chk: bool = False, resi_connection: str = '1conv', **block_kwargs):
        super().__init__()
        self.use_chk = use_chk
        self.blocks = nn.ModuleList([
            RGTBlock(dim, num_heads, group_index, i, split_size, drop_path=drop_paths[i], **block_kwargs)
            for i in range(depth)])
        self.conv = conv_after_blocks(dim, resi_connection)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        res = x
        for block in self.blocks:
            if self.use_chk and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        height, width = x_size
        return res + self.conv(tokens_to_image(x, height, width)).flatten(2).transpose(1, 2)


def conv_after_blocks(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group / the body: '1conv' (3x3) or '3conv' (3x3 -> 1x1 -> 3x3 at dim/4)."""
    if resi_connection == '1conv':
        return TokenConv2d(dim, dim, 3, 1, 1)
    if resi_connection == '3conv':
        return nn.Sequential(
            TokenConv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            TokenConv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            TokenConv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"RGT: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


@ARCH_REGISTRY.register()
class RGT(nn.Module):
    """Recursive Generalization Transformer; official constructor arguments and defaults.

    ``img_size`` has no effect on the computation (official behaviour; see OFFICIAL_MASK_RESOLUTION).
    ``use_chk`` enables (non-reentrant) gradient checkpointing per block. Published variants:
    ``FAMILY.variants`` / ``FAMILY.build('RGT-S', 4)``.
    """

    def __init__(self, img_size: int = 64, in_chans: int = 3, embed_dim: int = 180,
                 depth: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (2, 2, 2, 2), mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, use_chk: bool = False, upscale: int = 2,
                 img_range: float = 1.0, resi_connection: str = '1conv', split_size: Sequence[int] = (8, 8),
                 c_ratio: float = 0.5, **kwargs: Any):
        super().__init__()
        _check_arguments(embed_dim, depth, num_heads, split_size, c_ratio, resi_connection, attn_drop_rate, kwargs)
        self.img_size = img_size
        self.upscale = upscale
        self.img_range = img_range
        self.embed_dim = self.num_features = embed_dim
        self.use_chk = use_chk
        self.mean_shift = MeanShift(in_chans, img_range)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.before_RG = nn.Sequential(ImageToTokens(), nn.LayerNorm(embed_dim))
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depth), device='cpu').tolist()  # stochastic depth
        self.layers = nn.ModuleList()
        for i, (group_depth, group_heads) in enumerate(zip(depth, num_heads)):
            first = sum(depth[:i])
            self.layers.append(RGTResidualGroup(
                embed_dim, group_heads, group_depth, i, list(split_size),
                drop_paths=drop_path_rates[first:first + group_depth], use_chk=use_chk,
                resi_connection=resi_connection, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop=drop_rate, act_layer=act_layer, norm_layer=norm_layer,
                c_ratio=c_ratio))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = conv_after_blocks(embed_dim, resi_connection)

        self.conv_before_upsample, self.upsample, self.conv_last = pixelshuffle_reconstruction(
            embed_dim, in_chans, upscale)
        self.apply(init_transformer_weights)
        self.mask_scratch = share_with_submodules(self, 'mask_scratch', MaskScratch())
        self.shift_masks = share_with_submodules(self, 'shift_masks', ShiftMaskCache(SHIFT_MASK_CACHE_SIZE))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shallow features -> (B, C, H, W) deep features."""
        height, width = x.shape[-2:]
        x = self.before_RG(x)
        with self.mask_scratch.forward_scope(x):
            for layer in self.layers:
                x = layer(x, (height, width))
        return tokens_to_image(self.norm(x), height, width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) LR in [0, 1], any H and W -> (B, in_chans, upscale*H, upscale*W).

        Inputs smaller than RG-SA's recursion needs (16 in eval mode, 4 in training) or too elongated for it
        are reflect-padded (bottom/right) to ``min_padded_size`` and the output is cropped back.
        """
        if x.dim() != 4:
            raise ValueError(f'RGT expects a (B, C, H, W) batch, got a tensor of shape {tuple(x.shape)}')
        h, w = x.shape[-2:]
        x = pad_to_size(x, *min_padded_size(h, w, self.training))
        x = self.conv_first(self.mean_shift(x))
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return self.mean_shift.inverse(x)[..., :h * self.upscale, :w * self.upscale]


def _check_arguments(embed_dim: int, depth: Sequence[int], num_heads: Sequence[int], split_size: Sequence[int],
                     c_ratio: float, resi_connection: str, attn_drop_rate: float, extra: dict[str, Any]) -> None:
    """Clear errors for argument combinations the official code would only fail on deep inside forward."""
    if attn_drop_rate:
        raise ValueError(f'RGT: attn_drop_rate={attn_drop_rate} is not supported (the fused attention has no dropout '
                         f'on the attention weights); every official configuration uses 0')
    for key, value in extra.items():
        if key not in _IGNORED_KWARGS:
            raise TypeError(f'RGT: unknown argument {key}={value!r}')
        if value not in _IGNORED_KWARGS[key]:
            raise ValueError(f'RGT: {key} must be one of {_IGNORED_KWARGS[key]} (RGT always uses pixelshuffle), '
                             f'got {value!r}')
    if len(depth) != len(num_heads):
        raise ValueError(f'RGT: depth {list(depth)} and num_heads {list(num_heads)} must have the same length')
    if len(split_size) != 2 or min(split_size) < 1:
        raise ValueError(f'RGT: split_size must be two positive ints [s0, s1], got {split_size!r}')
    if resi_connection not in ('1conv', '3conv'):
        raise ValueError(f"RGT: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
    cr = int(embed_dim * c_ratio)
    for heads in set(num_heads):
        if heads < 2 or heads % 2 or (embed_dim // 2) % (heads // 2) or embed_dim % 2:
            raise ValueError(f'RGT: num_heads={heads} must be even with embed_dim/2={embed_dim / 2} divisible by '
                             f'num_heads/2 (L-SA splits channels and heads into two branches)')
        if embed_dim % heads or cr % heads:
            raise ValueError(f'RGT: embed_dim={embed_dim} and int(embed_dim*c_ratio)={cr} must be divisible by '
                             f'num_heads={heads}')


def detect_rgt(shapes: Shapes, state_dict: Any) -> dict[str, Any]:
    """Constructor kwargs of an RGT state_dict; the window orientation comes from the ``rpe_biases`` values
    when they are real tensors (shapes cannot tell (8, 32) from (32, 8))."""
    shape_of(shapes, 'before_RG.1.weight')
    embed_dim, in_chans = shape_of(shapes, 'conv_first.weight')[:2]
    depth = group_counts(shapes, r'layers\.(\d+)\.blocks\.0\.norm1\.weight',
                         r'layers\.{group}\.blocks\.(\d+)\.norm1\.weight')
    branch = 'layers.{}.blocks.0.attn.attns.0.'
    num_heads = [2 * shape_of(shapes, branch.format(i) + 'pos.pos3.2.weight')[0] for i in range(len(depth))]
    rpe_name = branch.format(0) + 'rpe_biases'
    rpe_biases = state_dict.get(rpe_name)
    if isinstance(rpe_biases, Tensor) and not rpe_biases.is_meta and rpe_biases.numel():
        # the offsets table runs from 1 - H_sp to H_sp - 1 (column 0) and the same for W_sp
        split_size = [int(rpe_biases[:, 0].max()) + 1, int(rpe_biases[:, 1].max()) + 1]
    else:  # published models use the short side first
        split_size = list(rectangle_from_counts(shape_of(shapes, branch.format(0) + 'relative_position_index')[0],
                                                shape_of(shapes, rpe_name)[0]))
    kwargs = dict(
        in_chans=in_chans, embed_dim=embed_dim, depth=depth, num_heads=num_heads, split_size=split_size,
        mlp_ratio=ratio(shape_of(shapes, 'layers.0.blocks.0.mlp.fc1.weight')[0], embed_dim),
        qkv_bias='layers.0.blocks.0.attn.qkv.bias' in shapes,
        resi_connection='3conv' if 'layers.0.conv.0.weight' in shapes else '1conv',
        upscale=pixelshuffle_scale(shapes, 'upsample', shape_of(shapes, 'conv_before_upsample.0.weight')[0]),
    )
    if 'layers.0.blocks.1.attn.q.weight' in shapes:
        kwargs['c_ratio'] = ratio(shapes['layers.0.blocks.1.attn.q.weight'][0], embed_dim)
    return kwargs


FAMILY = FamilySpec(
    name='RGT', cls=RGT, variants=RGT_VARIANTS, scales=(2, 3, 4), detect=detect_rgt,
    tiny=dict(embed_dim=24, depth=[2], num_heads=[2], split_size=[4, 8], mlp_ratio=2),
    min_size=lambda kwargs: EVAL_MIN_INPUT_SIZE, max_traced_size=lambda kwargs: TRACED_MAX_INPUT_SIZE,
    checkpointing_arg='use_chk', group_args=('depth', 'num_heads'), model_type='RGTModel',
)
