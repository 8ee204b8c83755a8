"""Building blocks shared by the transformer SR networks of this package.

Everything that more than one network family needs lives here, written once:
window partition / reverse (square and rectangular windows), the Swin relative position index,
shifted-window attention masks, padding to a multiple, the DIV2K mean normalisation and the
attention kernel itself (``attention``), which runs through
``torch.nn.functional.scaled_dot_product_attention`` with the position bias / shift mask as an
additive mask, or through the plain ``softmax(q @ k^T * scale + bias) @ v`` formulation.
The backend can be switched for benchmarks and equivalence tests with ``attention_backend``.

Generic layers that basicsr already ships with the right state_dict names (``DropPath``, ``Upsample``,
``UpsampleOneStep``, ``trunc_normal_``, ``to_2tuple``) are re-exported from basicsr. Token-wise linear
layers are ``TokenLinear`` (an ``nn.Linear`` with a faster CPU kernel), also inside ``Mlp``.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from basicsr.archs.arch_util import Upsample, to_2tuple, trunc_normal_  # noqa: F401  (re-exported)
from basicsr.archs.swinir_arch import DropPath, UpsampleOneStep  # noqa: F401  (re-exported)

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
    """Whether networks may reuse shift masks / position-bias tables computed in an earlier forward (and use
    the lean CPU kernels: ``TokenLinear``, ``TokenConv2d``, ``MaskScratch``); False under ``plain_formulation()``."""
    return _size_caches_enabled


@contextlib.contextmanager
def plain_formulation() -> Iterator[None]:
    """Run the networks as the official code does: plain softmax attention, no caches, stock kernels.

    The baseline of ``benchmarks/speed.py`` and of the equivalence tests: inside this context every
    forward rebuilds its shift masks and gathered position-bias tables, attention is computed as
    ``softmax(q @ k^T * scale + bias) @ v`` with the whole score matrix, and ``TokenLinear`` /
    ``TokenConv2d`` / ``grouped_token_linear`` run as ``nn.Linear`` / ``nn.Conv2d`` / per-slice layers.
    """
    global _size_caches_enabled
    previous, _size_caches_enabled = _size_caches_enabled, False
    try:
        with attention_backend('plain'):
            yield
    finally:
        _size_caches_enabled = previous


class TokenLinear(torch.nn.Linear):
    """``nn.Linear`` over the last dim of (..., C) tokens; on CPU in float32 a 1x1 convolution computes it.

    The (M, C) token matrix is viewed as a channels-last (1, C, M, 1) image, so oneDNN's convolution, which on CPU
    is about 2x faster than the GEMM behind ``nn.Linear`` for SR-transformer token matrices (1.7-2.3x forward and
    backward on the development machine; ``benchmarks/linear_kernels.py``), runs without any copy of a contiguous
    input and returns token-major output. Same parameters, state_dict names and results (up to float rounding) as
    ``nn.Linear``; on other devices or dtypes, and under ``plain_formulation()``, it is ``nn.Linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or not _lean_cpu_kernels_apply(x):
            return super().forward(x)
        return linear_as_conv1x1(x, self.weight, self.bias)


def _lean_cpu_kernels_apply(x: Tensor) -> bool:
    """Whether ``TokenLinear`` / ``grouped_token_linear`` may take their convolution path for ``x``."""
    return x.device.type == 'cpu' and x.dtype == torch.float32 and x.numel() > 0 and _size_caches_enabled


def linear_as_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for (..., C) ``x``, computed as a 1x1 convolution: (..., C) -> (..., out)."""
    lead, channels = x.shape[:-1], x.shape[-1]
    tokens = lead.numel()
    image = x.reshape(1, tokens, 1, channels).permute(0, 3, 1, 2)  # (1, C, M, 1), channels-last strides
    out = F.conv2d(image, weight.view(weight.shape[0], channels, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


class TokenConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` for feature maps that are views of (B, H*W, C) tokens (channels-last memory).

    On CPU the weight is handed to the convolution in channels-last memory format too, so oneDNN runs its NHWC
    kernel on the tokens in place and returns token-major output; with the default weight format PyTorch first
    copies the input to NCHW. 1.3-1.7x faster for HAT's CAB convolutions, 6-9x for depthwise ones on the development
    machine (``benchmarks/linear_kernels.py``). Same parameters, state_dict names and results (up to float rounding)
    as ``nn.Conv2d``; on other devices and under ``plain_formulation()`` it is ``nn.Conv2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != 'cpu' or not _size_caches_enabled:
            return super().forward(x)
        return self._conv_forward(x, self.weight.to(memory_format=torch.channels_last), self.bias)


def grouped_token_linear(x: Tensor, layers: Sequence[torch.nn.Linear]) -> Tensor:
    """``layers[g]`` applied to the g-th of ``len(layers)`` equal channel groups of (..., C) tokens, concatenated.

    On CPU in float32 one grouped 1x1 convolution computes all groups from a channels-last view, without
    slicing copies; elsewhere (and under ``plain_formulation()``) each layer runs on its channel slice.
    """
    group = x.shape[-1] // len(layers)
    biases = [layer.bias for layer in layers]
    uniform_bias = all(b is None for b in biases) or all(b is not None for b in biases)
    if not (uniform_bias and _lean_cpu_kernels_apply(x)):
        return torch.cat([layer(x[..., g * group:(g + 1) * group]) for g, layer in enumerate(layers)], dim=-1)
    lead = x.shape[:-1]
    image = x.reshape(1, lead.numel(), 1, x.shape[-1]).permute(0, 3, 1, 2)  # (1, C, M, 1), channels-last
    weight = torch.cat([layer.weight for layer in layers])  # (sum of out features, group)
    bias = torch.cat(biases) if biases[0] is not None else None
    out = F.conv2d(image, weight.view(weight.shape[0], group, 1, 1), bias, groups=len(layers))
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


class Mlp(torch.nn.Module):
    """fc1 -> act -> dropout -> fc2 -> dropout on (..., C) tokens (basicsr/timm ``Mlp`` names; ``TokenLinear`` layers
    unless ``linear_layer`` says otherwise)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[torch.nn.Module] = torch.nn.GELU, drop: float = 0.0,
                 linear_layer: type[torch.nn.Linear] = TokenLinear):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = linear_layer(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear_layer(hidden_features, out_features)
        self.drop = torch.nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


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
    # CPU SDPA has no fused kernel for v wider than q/k (RGT's RG-SA) nor for a mask that needs a gradient
    # (a position bias in training); its math fallback is slower than the plain formula there
    mask_grad = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    fused = _attention_backend == 'sdpa' and not (q.device.type == 'cpu' and (q.shape[-1] != v.shape[-1] or mask_grad))
    if fused:
        if bias is not None:
            # a mask with fewer dims than q sends CPU SDPA to its unfused math kernel (2.8x slower for
            # HAT's windows); a broadcasting view of the same rank keeps the fused flash kernel
            bias = bias.to(q.dtype)
            bias = bias.view((1,) * (q.dim() - bias.dim()) + tuple(bias.shape))
            if bias.is_inference() and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                bias = bias.clone()  # a cache filled under inference_mode; autograd may not save it as is
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    num_scores = q.shape[:-1].numel() * k.shape[-2]
    if _attention_backend == 'plain' or num_scores <= PLAIN_SCORES_LIMIT:
        return _plain_attention(q, k, v, scale, bias)
    # no fused kernel: bound the score matrix by taking the queries in slices (softmax is per query row)
    rows = max(1, PLAIN_SCORES_LIMIT * q.shape[-2] // num_scores)
    return torch.cat([_plain_attention(q[..., start:start + rows, :], k, v, scale,
                                       _query_rows(bias, start, rows))
                      for start in range(0, q.shape[-2], rows)], dim=-2)


#: Outside ``plain_formulation()``, an unfused attention whose score matrix would exceed this many elements
#: (64 MiB in fp32) is computed in slices of queries; every slice is exact, the peak memory stays bounded.
PLAIN_SCORES_LIMIT = 1 << 24


def _plain_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


def _query_rows(bias: Tensor | None, start: int, rows: int) -> Tensor | None:
    """The rows of a (..., Nq or 1, Nk) additive mask that belong to queries ``start:start + rows``."""
    if bias is None or bias.dim() < 2 or bias.shape[-2] == 1:
        return bias
    return bias[..., start:start + rows, :]


class MaskScratch:
    """Reusable memory for the (nW * heads, N, N) sums of a position bias and a shift mask.

    A shifted-window block adds its (heads, N, N) position bias to the (nW, N, N) shift mask: 12-25 MiB
    per block at a 64x64 input, hundreds of MiB at 256x256. Allocating that afresh in every block costs
    more than the attention itself on CPU (fresh pages fault in). A network owns one ``MaskScratch``
    shared by its blocks (``share_with_submodules``) and runs its forward inside ``forward_scope()``:
    blocks that run without autograd then write their sums into one buffer, which is dropped when the
    outermost forward ends, so nothing stays allocated between forwards. With autograd on (the sum may
    be saved for backward), outside a scope, or under ``plain_formulation()``, each sum is a new tensor.
    State is kept per thread, so threads sharing a network in eval mode do not share the buffer.
    """

    def __init__(self) -> None:
        self._per_thread: dict[int, list] = {}  # thread id -> [scope depth, buffer or None]

    @contextlib.contextmanager
    def forward_scope(self) -> Iterator[None]:
        state = self._per_thread.setdefault(threading.get_ident(), [0, None])
        state[0] += 1
        try:
            yield
        finally:
            state[0] -= 1
            if state[0] == 0:
                del self._per_thread[threading.get_ident()]

    def buffer(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A reusable (uninitialised) tensor of ``shape`` with ``like``'s dtype/device, or None when not allowed."""
        state = self._per_thread.get(threading.get_ident())
        if state is None or not _size_caches_enabled or torch.is_grad_enabled():
            return None
        buffer = state[1]
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            state[1] = None  # release the old one before allocating
            buffer = state[1] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer


def share_with_submodules(network: torch.nn.Module, name: str, value: Any) -> Any:
    """Set ``value`` (a cache or scratch object one network shares) on every submodule that declares the
    attribute ``name``; returns ``value``."""
    for module in network.modules():
        if hasattr(module, name):
            setattr(module, name, value)
    return value


class ShiftMaskCache:
    """Shifted-window masks (``shifted_window_mask``) for the ``capacity`` most recent keys.

    One per network, shared by its blocks (``share_with_submodules``), keyed on (height, width,
    window_size, shift_size, device). A mask is as large as one head's attention over the whole image, so
    only a few are kept; the oldest goes first. Masks are normal tensors even when first built under
    ``inference_mode``. Under ``plain_formulation()`` every call builds a fresh mask, as the official code does.
    """

    def __init__(self, capacity: int, fill: float = -100.0):
        self.capacity = capacity
        self.fill = fill
        self.masks: dict[tuple, Tensor] = {}

    def get(self, height: int, width: int, window_size: WindowSize, shift_size: WindowSize,
            device: torch.device) -> Tensor:
        """(num_windows, Wh*Ww, Wh*Ww) mask of a (height, width) feature map."""
        if not _size_caches_enabled:
            return shifted_window_mask(height, width, window_size, shift_size, self.fill, device=device)
        key = (height, width, window_size, shift_size, device)
        mask = self.masks.get(key)
        if mask is None:
            while len(self.masks) >= self.capacity:
                self.masks.pop(next(iter(self.masks)))
            with torch.inference_mode(False):
                mask = self.masks[key] = shifted_window_mask(height, width, window_size, shift_size, self.fill,
                                                             device=device)
        return mask


def add_shift_mask(bias: Tensor, shift_mask: Tensor, scratch: MaskScratch | None = None) -> Tensor:
    """Position bias plus shift mask as one additive attention mask.

    Args:
        bias: (heads, N, N) position bias.
        shift_mask: (nW, N, N) shifted-window mask.
        scratch: where to write the sum when no autograd graph can keep it (see ``MaskScratch``).

    Returns:
        (nW * heads, N, N), window-major.
    """
    shift_mask = shift_mask.to(bias.dtype)
    shape = (shift_mask.shape[0], *bias.shape)
    out = scratch.buffer(shape, bias) if scratch is not None else None
    if out is None:
        return (bias.unsqueeze(0) + shift_mask.unsqueeze(1)).flatten(0, 1)
    return torch.add(bias.unsqueeze(0), shift_mask.unsqueeze(1), out=out).flatten(0, 1)


def window_attention(qkv: Tensor, num_heads: int, scale: float, bias: Tensor, shift_mask: Tensor | None = None,
                     scratch: MaskScratch | None = None) -> Tensor:
    """Multi-head self attention inside windows, from packed queries, keys and values.

    q, k and v are taken as strided views of ``qkv`` (the fused CPU kernel reads them in place and writes
    its output token-major, so no head split or merge copies a tensor); position bias and shift mask
    form one additive mask (``add_shift_mask``).

    Args:
        qkv: (B*nW, N, 3, C) windows, those of one image consecutive; the channel dim must be unit-strided.
        num_heads: heads; C must be a multiple.
        scale: multiplier of ``q @ k^T``.
        bias: (heads, N, N) relative position bias.
        shift_mask: (nW, N, N) additive mask of shifted windows, or None.
        scratch: the network's ``MaskScratch`` for the bias + mask sum, if any.

    Returns:
        (B*nW, N, C)
    """
    windows, n, _, c = qkv.shape
    head_dim = c // num_heads
    q, k, v = qkv.view(windows, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # (B*nW, heads, N, d) each
    if shift_mask is None:
        return attention(q, k, v, scale, bias).transpose(1, 2).reshape(windows, n, c)
    num_windows = shift_mask.shape[0]
    if windows % num_windows:
        raise ValueError(f'window_attention: {windows} windows is not a multiple of the mask\'s {num_windows} windows '
                         'per image')
    mask = add_shift_mask(bias, shift_mask, scratch)  # (nW*heads, N, N)
    if windows == num_windows:  # one image: the mask lines up with the (nW, heads) batch as it is
        out = attention(q, k, v, scale, mask.view(num_windows, num_heads, n, n))
        return out.transpose(1, 2).reshape(windows, n, c)
    # several images: windows and heads share one batch axis so the mask broadcasts over the images
    batch = windows // num_windows
    q, k, v = (t.reshape(batch, num_windows * num_heads, n, head_dim) for t in (q, k, v))
    out = attention(q, k, v, scale, mask)
    return out.view(windows, num_heads, n, head_dim).transpose(1, 2).reshape(windows, n, c)


def window_partition(x: Tensor, window_size: WindowSize) -> Tensor:
    """Split a feature map into non-overlapping windows (one copy, also from a strided view).

    Args:
        x: (B, H, W, *C), H and W multiples of the window sides; any trailing dims.
        window_size: (window height, window width).

    Returns:
        (B * num_windows, window height, window width, *C)
    """
    b, h, w = x.shape[:3]
    wh, ww = window_size
    channels = x.shape[3:]
    x = x.view(b, h // wh, wh, w // ww, ww, *channels)
    return x.permute(0, 1, 3, 2, 4, *range(5, x.dim())).reshape(-1, wh, ww, *channels)


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


def pixelshuffle_reconstruction(embed_dim: int, out_chans: int, upscale: int,
                                 num_feat: int = 64) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """SwinIR's 'pixelshuffle' reconstruction as (conv_before_upsample, upsample, conv_last).

    conv3x3 embed_dim -> num_feat + LeakyReLU, ``Upsample`` (pixel shuffle), conv3x3 num_feat -> out_chans:
    (B, embed_dim, H, W) -> (B, out_chans, upscale*H, upscale*W) when applied in that order. Networks assign
    the three to attributes of those names, the official state_dict keys.
    """
    conv_before_upsample = torch.nn.Sequential(torch.nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                               torch.nn.LeakyReLU(inplace=True))
    return conv_before_upsample, Upsample(upscale, num_feat), torch.nn.Conv2d(num_feat, out_chans, 3, 1, 1)


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


def variant_kwargs(family: str, variants: dict, name: str, upscale: int, **overrides) -> dict:
    """Constructor arguments of the published variant ``variants[name]`` at ``upscale``; ``overrides`` win."""
    if name not in variants:
        raise KeyError(f'unknown {family} variant {name!r}; known: {sorted(variants)}')
    return {**variants[name], 'upscale': upscale, **overrides}


def build_variant(cls: type, variants: dict, name: str, upscale: int, **overrides):
    """Instantiate the published variant ``variants[name]`` of ``cls`` at ``upscale``; ``overrides`` win."""
    return cls(**variant_kwargs(cls.__name__, variants, name, upscale, **overrides))
