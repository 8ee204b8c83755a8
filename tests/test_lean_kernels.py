"""The building blocks of the lean eval paths: phase-split dilated convolutions, channels-last pixel-matrix helpers,
window plans without shift masks, and LabNet's folded / channel-blocked block."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sr_arch.archs.labnet_arch import FOLD_MIN_PIXELS_PER_CHANNEL, LabNetBlock, _channel_blocks
from sr_arch.archs.layers import SameConv2d, attention, dilated_conv_by_phases, plain_formulation
from sr_arch.archs.layers.channels_last import (
    channel_layer_norm,
    fold_tokens,
    gelu_image,
    image,
    lean_eval_applies,
    pixel_linear,
    pixel_linear_sum,
    pixels,
    to_channels_last,
    unfold_tokens,
)
from sr_arch.archs.layers.window_order import WindowPlanCache, plan_windows, shifted_window_labels
from sr_arch.archs.layers.windows import (
    gather_position_bias,
    relative_position_index,
    shifted_window_mask,
    window_partition,
)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> bool:
    return actual.shape == expected.shape and (actual - expected).abs().max().item() <= rtol * max(
        expected.abs().max().item(), 1.0)


# ---------------------------------------------------------------------------------------------- convolutions

@pytest.mark.parametrize('size, kernel, dilation, groups, channels_last', [
    ((64, 64), 9, (2, 2), 16, True), ((30, 22), 9, (6, 6), 16, True), ((13, 21), 3, (2, 3), 1, False),
    ((5, 3), 9, (4, 4), 16, False), ((1, 1), 7, (6, 6), 16, True), ((17, 16), 5, (3, 3), 4, True)])
def test_dilated_convolution_by_phases_equals_the_dilated_convolution(size, kernel, dilation, groups, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 16, *size)
    weight, bias = torch.randn(8 if groups == 1 else 16, 16 // groups, kernel, kernel), torch.randn(16)
    bias = bias[:weight.shape[0]]
    padding = (dilation[0] * (kernel // 2), dilation[1] * (kernel // 2))
    expected = F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)
    if channels_last:
        x = to_channels_last(x)
    assert close(dilated_conv_by_phases(x, weight, bias, dilation, groups), expected)


def test_same_conv2d_is_an_nn_conv2d_and_steps_aside_under_the_plain_formulation():
    conv = SameConv2d(8, 8, 9, dilation=4, groups=8)
    reference = torch.nn.Conv2d(8, 8, 9, padding=16, dilation=4, groups=8)
    assert conv.padding == reference.padding and conv.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, 20, 12)
    with torch.no_grad():
        assert close(conv(x), reference(x))
        with plain_formulation():
            assert torch.equal(conv(x), reference(x))
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        SameConv2d(8, 8, 4)


# ---------------------------------------------------------------------------------------------- channels-last

def test_lean_eval_applies_only_in_cpu_float32_eval_without_autograd():
    x = torch.rand(1, 3, 4, 4)
    assert not lean_eval_applies(x)  # autograd is on
    with torch.no_grad():
        assert lean_eval_applies(x)
        assert not lean_eval_applies(x.double())
        with plain_formulation():
            assert not lean_eval_applies(x)
    with torch.inference_mode():
        assert lean_eval_applies(x)


def test_pixel_matrix_helpers():
    torch.manual_seed(0)
    x = to_channels_last(torch.randn(2, 6, 5, 7))
    m = pixels(x)
    assert m.shape == (70, 6) and m.data_ptr() == x.data_ptr()  # a view of channels-last memory
    assert torch.equal(image(m, 2, 5, 7), x)
    assert torch.equal(pixels(x.contiguous()), m)  # NCHW input: copied into the same matrix
    weight, bias, residual = torch.randn(4, 6), torch.randn(4), torch.randn(70, 4)
    expected = F.linear(m, weight, bias)
    assert close(pixel_linear(m, weight, bias), expected)
    assert close(pixel_linear(m, weight, bias, accumulate=residual), expected + residual)
    assert close(pixel_linear(m, weight), F.linear(m, weight))
    parts = [m[:, :2].contiguous(), m[:, 2:].contiguous()]
    assert close(pixel_linear_sum(parts, weight, bias), expected)
    with pytest.raises(ValueError, match='inputs have 2 channels, the weight takes 6'):
        pixel_linear_sum(parts[:1], weight)
    norm_w, norm_b = torch.randn(6), torch.randn(6)
    manual = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm_w, norm_b, 1e-6).permute(0, 3, 1, 2)
    assert close(channel_layer_norm(x, norm_w, norm_b, 1e-6), manual)
    assert close(gelu_image(x), F.gelu(x), 1e-6)


@pytest.mark.parametrize('shape', [(2, 4, 5, 7), (1, 32, 16, 12), (1, 3, 1, 1), (1, 2, 2, 1)])
def test_unfold_and_fold_tokens_equal_nn_unfold_and_fold(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    expected = F.unfold(x, 3, padding=1).transpose(1, 2)
    for layout in (x, to_channels_last(x)):
        tokens = unfold_tokens(layout)
        assert tokens.is_contiguous() and torch.equal(tokens, expected)
    tokens = torch.randn_like(expected).contiguous()
    folded = fold_tokens(tokens, shape[-2:])
    assert close(folded, F.fold(tokens.transpose(1, 2), shape[-2:], 3, padding=1), 1e-6)


# ---------------------------------------------------------------------------------------------- window plans

@pytest.mark.parametrize('size, window, shift', [((16, 32), (4, 8), (2, 4)), ((24, 16), (8, 4), (2, 4)),
                                                  ((8, 8), (8, 8), (4, 4)), ((16, 32), (4, 8), (0, 0))])
def test_window_plan_attention_equals_masked_shifted_window_attention(size, window, shift):
    """Unmasked attention per plan unit = the official roll + partition + masked attention + reverse + roll."""
    torch.manual_seed(0)
    (h, w), (wh, ww), batch, heads, dim = size, window, 2, 2, 4
    n = wh * ww
    q, k, v = (torch.randn(batch, h * w, heads, dim) for _ in range(3))
    # a relative position bias (what the plan relies on: equal offsets, equal bias)
    table = torch.randn((2 * wh - 1) * (2 * ww - 1), heads)
    bias = gather_position_bias(table, relative_position_index(window))
    # official: roll, partition, bias + mask (fill -1e9), attention, back
    def windows(t):
        t = t.view(batch, h, w, heads * dim)
        if shift[0] or shift[1]:
            t = torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        return window_partition(t, window).view(-1, n, heads, dim).transpose(1, 2)
    num_windows = (h // wh) * (w // ww)
    mask = shifted_window_mask(h, w, window, shift, -1e9) if shift[0] else torch.zeros(num_windows, n, n)
    full_bias = (bias[None] + mask[:, None]).repeat(batch, 1, 1, 1)
    out = attention(windows(q), windows(k), windows(v), 1.0, full_bias).transpose(1, 2).reshape(-1, wh, ww, heads * dim)
    out = out.view(batch, h // wh, w // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(batch, h, w, -1)
    if shift[0] or shift[1]:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    expected = out.reshape(batch * h * w, heads * dim)
    # plan: one gather, unmasked units, one scatter
    plan = plan_windows(batch, h, w, window, shift)
    assert torch.equal(plan.scatter[plan.gather], torch.arange(batch * h * w))
    assert sum(u.tokens for u in plan.units) == batch * h * w and plan.units[0].start == 0
    planned = torch.empty(batch * h * w, heads * dim)
    for units in plan.units:
        rows = slice(units.start, units.start + units.tokens)
        length = units.shape[0] * units.shape[1]
        qu, ku, vu = (t.reshape(-1, heads, dim).index_select(0, plan.gather)[rows]
                      .view(units.count, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        unit_bias = bias if units.bias_index is None else bias[:, units.bias_index][:, :, units.bias_index]
        planned[rows] = attention(qu, ku, vu, 1.0, unit_bias).transpose(1, 2).reshape(units.tokens, -1)
    assert close(planned.index_select(0, plan.scatter), expected)


def test_window_labels_are_the_shift_mask_and_plans_are_cached():
    for window, shift in [((8, 32), (4, 16)), ((32, 8), (4, 16))]:  # GRFormer's un-swapped shift included
        labels = shifted_window_labels(64, 64, window, shift)
        mask = shifted_window_mask(64, 64, window, shift, fill=1.0)
        assert torch.equal((labels[:, :, None] != labels[:, None, :]).float(), mask)
    plan = plan_windows(1, 64, 64, (32, 8), (4, 16))
    assert [(u.count, u.shape) for u in plan.units] == [(8, (32, 8)), (8, (28, 8)), (8, (4, 8))]
    cache = WindowPlanCache(capacity=2)
    first = cache.get(1, 16, 16, (4, 4), (2, 2), torch.device('cpu'))
    assert cache.get(1, 16, 16, (4, 4), (2, 2), torch.device('cpu')) is first
    cache.get(2, 16, 16, (4, 4), (2, 2), torch.device('cpu'))
    cache.get(1, 16, 16, (4, 4), (0, 0), torch.device('cpu'))
    assert len(cache.plans) == 2 and (1, 16, 16, (4, 4), (2, 2), torch.device('cpu')) not in cache.plans


# ---------------------------------------------------------------------------------------------- LabNet block

def test_channel_blocks_cover_the_channels_in_multiples_of_eight():
    for channels in (5, 8, 128, 129, 170, 340, 680):
        blocks = _channel_blocks(channels)
        assert blocks[0][0] == 0 and blocks[-1][1] == channels
        assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
        assert all((stop - start) % 8 == 0 and stop - start <= 128 for start, stop in blocks[:-1])


@pytest.mark.parametrize('size', [4, 12])  # 16 and 144 pixels: below and above the folding threshold (3 x 32)
def test_labnet_block_lean_path_with_and_without_folding_equals_the_official_block(size):
    torch.manual_seed(0)
    block = LabNetBlock(32).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # beta and the gates start at zero: make every term count
        x = torch.randn(2, 32, size, size)
        assert (2 * size * size >= FOLD_MIN_PIXELS_PER_CHANNEL * 32) == (size == 12)
        lean = block(to_channels_last(x))
        with plain_formulation():
            official = block(x)
    assert close(lean, official)
