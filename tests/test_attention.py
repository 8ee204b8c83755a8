"""The shared attention pieces (sr_arch.archs.layers): the fused kernel choice, window_attention and MaskScratch."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from sr_arch.archs.layers import (
    MaskScratch,
    add_shift_mask,
    attention,
    attention_backend,
    plain_formulation,
    shifted_window_mask,
    window_attention,
    window_partition,
)

HEADS, WINDOW, DIM = 3, (4, 8), 12
N = WINDOW[0] * WINDOW[1]


def _reference_window_attention(qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
                                scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias [+ mask]) v per window and head, in float64."""
    windows, n, _, c = qkv.shape
    q, k, v = qkv.double().view(windows, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * scale + bias.double()
    if mask is not None:
        num_windows = mask.shape[0]
        scores = scores.view(-1, num_windows, HEADS, n, n) + mask.double()[None, :, None]
        scores = scores.view(windows, HEADS, n, n)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(windows, n, c).float()


def _case(batch: int, seed: int = 0):
    torch.manual_seed(seed)
    mask = shifted_window_mask(8, 16, WINDOW, (2, 4))  # (4 windows, N, N)
    qkv = torch.randn(batch * mask.shape[0], N, 3, DIM)
    bias = torch.randn(HEADS, N, N)
    return qkv, bias, mask


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('shifted', [False, True])
def test_window_attention_matches_the_formula(batch, shifted):
    qkv, bias, mask = _case(batch)
    mask = mask if shifted else None
    expected = _reference_window_attention(qkv, bias, mask, 0.3)
    for backend in ('sdpa', 'plain'):
        with attention_backend(backend):
            out = window_attention(qkv, HEADS, 0.3, bias, mask, MaskScratch())
        assert out.shape == (qkv.shape[0], N, DIM)
        assert (out - expected).abs().max().item() < 1e-5, backend


def test_window_attention_reads_strided_qkv():
    qkv, bias, mask = _case(2)
    wide = torch.randn(*qkv.shape[:3], 2 * DIM)
    wide[..., DIM:] = qkv  # the second channel half, as RGT's second L-SA branch sees it
    out = window_attention(wide[..., DIM:], HEADS, 0.3, bias, mask)
    assert torch.allclose(out, window_attention(qkv.contiguous(), HEADS, 0.3, bias, mask), atol=1e-6)


def test_window_attention_rejects_a_mask_of_another_window_count():
    qkv, bias, mask = _case(1)
    with pytest.raises(ValueError, match='not a multiple of the mask'):
        window_attention(qkv[:3], HEADS, 0.3, bias, mask)


def test_window_partition_of_a_strided_view_with_trailing_dims():
    x = torch.arange(2 * 8 * 16 * 3 * 5.0).view(2, 8, 16, 3, 5)
    windows = window_partition(x.permute(0, 1, 2, 3, 4)[..., 1:4], WINDOW)
    assert windows.shape == (2 * 4, 4, 8, 3, 3)
    assert torch.equal(windows[1], x[0, 0:4, 8:16, :, 1:4])  # second window of the first image: top right
    assert torch.equal(windows[4 + 2], x[1, 4:8, 0:8, :, 1:4])


def test_a_lower_rank_mask_still_takes_the_fused_cpu_kernel():
    """A (heads, N, N) mask with 4-D q/k/v used to fall back to the unfused math kernel (2.8x slower)."""
    q, k, v = (torch.randn(4, HEADS, N, 8) for _ in range(3))
    bias = torch.randn(HEADS, N, N)
    with torch.no_grad(), profile() as prof:
        out = attention(q, k, v, 0.5, bias)
    kernels = {event.key for event in prof.key_averages()}
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in kernels
    assert 'aten::_scaled_dot_product_attention_math' not in kernels
    with plain_formulation():
        assert (out - attention(q, k, v, 0.5, bias)).abs().max().item() < 1e-5


def test_attention_with_wider_values_than_keys():
    q, k = torch.randn(2, HEADS, 16, 5), torch.randn(2, HEADS, 6, 5)
    v = torch.randn(2, HEADS, 6, 10)
    expected = ((q @ k.transpose(-2, -1)) * 0.4).softmax(-1) @ v
    assert torch.allclose(attention(q, k, v, 0.4), expected, atol=1e-6)


def test_mask_scratch_reuses_one_buffer_only_inside_a_no_grad_scope():
    _, bias, mask = _case(1)
    expected = (bias[None] + mask[:, None]).flatten(0, 1)
    scratch = MaskScratch()
    assert scratch.buffer((4, HEADS, N, N), bias) is None  # outside a forward scope
    with scratch.forward_scope(), torch.no_grad():
        first = add_shift_mask(bias, mask, scratch)
        second = add_shift_mask(bias * 2, mask, scratch)
        assert first.data_ptr() == second.data_ptr()  # the same memory, rewritten
        assert torch.equal(second, (2 * bias[None] + mask[:, None]).flatten(0, 1))
    with scratch.forward_scope():
        bias_param = bias.clone().requires_grad_(True)
        with_grad = add_shift_mask(bias_param, mask, scratch)  # autograd may keep it: a fresh tensor
        assert torch.equal(with_grad.detach(), expected)
        with_grad.sum().backward()
        assert torch.equal(bias_param.grad, torch.full_like(bias, 4.0))
    assert scratch._per_thread == {}  # released when the outermost scope ends
    with plain_formulation(), scratch.forward_scope(), torch.no_grad():
        assert scratch.buffer((4, HEADS, N, N), bias) is None  # the official formulation allocates


def test_networks_release_their_scratch_after_forward():
    from sr_arch.archs.hat_arch import HAT

    net = HAT(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=8, compress_ratio=3,
              squeeze_factor=4, upsampler='pixelshuffle', upscale=2).eval()
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
    assert net.mask_scratch._per_thread == {}
    assert all(m.mask_scratch is net.mask_scratch for m in net.modules() if hasattr(m, 'mask_scratch'))


@pytest.mark.parametrize('bias_rows', [None, 1, 16])
def test_unfused_attention_in_query_slices_is_exact(monkeypatch, bias_rows):
    """Wider v than q/k has no fused CPU kernel; large score matrices are then built a slice of queries at a time."""
    from sr_arch.archs.layers import attention_ops

    torch.manual_seed(0)
    q, k, v = torch.randn(2, HEADS, 16, 5), torch.randn(2, HEADS, 6, 5), torch.randn(2, HEADS, 6, 10)
    bias = None if bias_rows is None else torch.randn(HEADS, bias_rows, 6)
    whole = attention(q, k, v, 0.4, bias)
    monkeypatch.setattr(attention_ops, 'PLAIN_SCORES_LIMIT', 2 * HEADS * 3 * 6)  # 3 query rows per slice (6 slices)
    sliced = attention(q, k, v, 0.4, bias)
    assert sliced.shape == whole.shape
    assert (sliced - whole).abs().max().item() < 1e-6


@pytest.mark.parametrize('with_bias', [True, False])
def test_grouped_token_linear_equals_the_layers_on_their_channel_groups(with_bias):
    from sr_arch.archs.layers import grouped_token_linear

    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 4, bias=with_bias) for _ in range(3)]
    x = torch.randn(2, 5, 7, 18)
    expected = torch.cat([layer(x[..., 6 * g:6 * (g + 1)]) for g, layer in enumerate(layers)], dim=-1)
    out = grouped_token_linear(x, layers)
    assert out.shape == (2, 5, 7, 12)
    assert (out - expected).abs().max().item() < 1e-6
    with plain_formulation():
        assert torch.equal(grouped_token_linear(x, layers), expected)  # the official per-slice layers
    out.sum().backward()
    assert all(layer.weight.grad is not None for layer in layers)
