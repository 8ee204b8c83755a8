"""Building blocks shared by the network families (timm's ``layers`` in spirit), one concern per module:

* ``context``: the attention-backend and plain-formulation switches, and ``tracing()``;
* ``attention_ops``: the attention kernel and windowed multi-head attention;
* ``windows``: window partition / reverse, relative position index, shift masks, padding;
* ``caches``: position-bias cache, shift-mask cache, scratch buffers (one set of validity rules);
* ``kernels``: ``TokenLinear`` / ``TokenConv2d`` / ``grouped_token_linear`` (faster CPU kernels), ``Mlp``;
* ``init``: weight initialisation; ``reconstruction``: mean shift and pixel-shuffle heads.

Generic layers that basicsr already ships with the right state_dict names are re-exported here.
"""
from basicsr.archs.arch_util import to_2tuple, trunc_normal_
from basicsr.archs.swinir_arch import DropPath

from sr_arch.archs.layers.attention_ops import (
    PLAIN_SCORES_LIMIT,
    add_shift_mask,
    attention,
    multihead_window_attention,
    window_attention,
)
from sr_arch.archs.layers.caches import DerivedTensorCache, MaskScratch, ShiftMaskCache, share_with_submodules
from sr_arch.archs.layers.context import (
    ATTENTION_BACKENDS,
    attention_backend,
    get_attention_backend,
    lean_paths,
    lean_paths_enabled,
    plain_formulation,
    symbolic,
    tracing,
)
from sr_arch.archs.layers.init import init_transformer_weights, trunc_normal_unless_meta
from sr_arch.archs.layers.kernels import (
    Mlp,
    SameConv2d,
    TokenConv2d,
    TokenLinear,
    dilated_conv_by_phases,
    grouped_token_linear,
    linear_as_conv1x1,
)
from sr_arch.archs.layers.reconstruction import (
    DIV2K_RGB_MEAN,
    MeanShift,
    Upsample,
    UpsampleOneStep,
    pixelshuffle_reconstruction,
)
from sr_arch.archs.layers.windows import (
    WindowSize,
    gather_position_bias,
    pad_to_multiple,
    pad_to_size,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    'ATTENTION_BACKENDS', 'DIV2K_RGB_MEAN', 'DerivedTensorCache', 'DropPath', 'MaskScratch', 'MeanShift', 'Mlp',
    'PLAIN_SCORES_LIMIT', 'SameConv2d', 'ShiftMaskCache', 'TokenConv2d', 'TokenLinear', 'Upsample', 'UpsampleOneStep',
    'WindowSize', 'add_shift_mask', 'attention', 'attention_backend', 'dilated_conv_by_phases',
    'get_attention_backend',
    'gather_position_bias', 'grouped_token_linear', 'init_transformer_weights', 'lean_paths', 'lean_paths_enabled',
    'linear_as_conv1x1', 'multihead_window_attention', 'pad_to_multiple', 'pad_to_size',
    'pixelshuffle_reconstruction', 'plain_formulation', 'relative_position_index',
    'share_with_submodules', 'shifted_window_mask', 'symbolic', 'to_2tuple', 'trunc_normal_',
    'trunc_normal_unless_meta', 'tracing', 'window_attention', 'window_partition', 'window_reverse',
]
