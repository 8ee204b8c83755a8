"""Tiling, self-ensemble, InferenceMixin.test(), peak memory, profile."""
import math

import numpy as np
import pytest
import torch
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY

from helpers import bicubic_downsample, load_golden, photo, psnr_y
from sr_arch.models.inference import ENSEMBLE_TRANSFORMS, dihedral_inverse, dihedral_transform, padded_forward
from sr_arch.utils.tiling import (
    PeakMemoryTracker,
    TileOptions,
    Tiler,
    auto_tile_size,
    measure_peak_memory,
    parse_memory_size,
    tile_starts,
    tiled_forward,
)


def conv_net(out_channels: int = 12, scale: int = 2) -> torch.nn.Module:
    """Two 3x3 convs + pixel shuffle: receptive radius 2 LR pixels, so tiles overlapping by 8 are exact."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, out_channels, 3, padding=1), torch.nn.PixelShuffle(scale)).eval()


def tiny_hat(case: str = 'hat_tiny_x2') -> tuple[torch.nn.Module, int]:
    golden = load_golden(case)
    net = ARCH_REGISTRY.get('HAT')(**golden['kwargs'])
    net.load_state_dict(golden['state_dict'])
    return net.eval(), golden['kwargs']['window_size']


def to_tensor(img_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img_uint8).permute(2, 0, 1).float().div(255)[None]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.round(x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- tiling

def test_tile_starts_cover_the_axis_with_equal_tiles_and_the_overlap():
    for length, tile, overlap in [(50, 16, 6), (37, 16, 4), (16, 16, 4), (10, 16, 4), (100, 32, 0)]:
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


def test_image_not_larger_than_a_tile_is_run_in_one_piece():
    net, x = conv_net(), torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(tiled_forward(net, x, 2, tile_size=32, overlap=8), net(x))


def test_blending_is_exact_when_the_overlap_covers_the_receptive_field():
    net, x = conv_net(), torch.rand(2, 3, 50, 37)
    with torch.no_grad():
        reference = net(x)
        errors = {o: (tiled_forward(net, x, 2, 16, o, batch_size=3) - reference).abs().max().item() for o in (0, 8)}
    # without overlap the tile borders (zero padding inside the net) are visible; with 8 >= 4 x radius 2 not
    assert errors[0] > 0.05
    assert errors[8] < 1e-3


def test_tiled_hat_on_a_real_photo_matches_untiled_closely():
    """Issue 3 acceptance: a tiled run on an image larger than the tile matches the untiled output.

    Measured (tiny HAT of the golden vectors, 80x80 LR of 'astronaut', 48-pixel tiles, 16 overlap):
    PSNR(tiled vs untiled) 59.6 dB; Y-PSNR against HR differs by 0.0013 dB.
    """
    net, window = tiny_hat()
    hr = photo('astronaut', 160)
    lr = to_tensor(bicubic_downsample(hr, 2))
    forward = lambda x: padded_forward(net, x, 2, window)  # noqa: E731
    with torch.no_grad():
        untiled = forward(lr)
        tiled = tiled_forward(forward, lr, 2, tile_size=48, overlap=16, batch_size=4)
    assert tiled.shape == untiled.shape == (1, 3, 160, 160)
    mse = torch.mean((tiled.clamp(0, 1) - untiled.clamp(0, 1)) ** 2).item()
    psnr_tiled_vs_untiled = 10 * math.log10(1 / mse)
    delta_y = abs(psnr_y(to_uint8(tiled), hr, 2) - psnr_y(to_uint8(untiled), hr, 2))
    print(f'tiled vs untiled: {psnr_tiled_vs_untiled:.2f} dB; |delta Y-PSNR vs HR| = {delta_y:.4f} dB')
    assert psnr_tiled_vs_untiled > 40
    assert delta_y < 0.05
    no_overlap = tiled_forward(forward, lr, 2, tile_size=48, overlap=0)
    assert torch.mean((no_overlap - untiled) ** 2).item() > mse  # blending the overlap is what helps


def test_tile_options_validation_names_the_key():
    assert TileOptions.from_opt(None) is None
    assert TileOptions.from_opt({'tile_size': 64, 'tile_pad': 8, 'batch_size': 2}) == TileOptions(64, 8, 2)
    assert TileOptions.from_opt({'tile_size': 'auto', 'max_memory': '2GiB'}).max_memory == 2 * 2**30
    for block, message in [({'tile_size': -3}, 'val.tile.tile_size'), ({'tile_size': 16, 'tile_pad': 16}, 'tile_pad'),
                           ({'tile_size': 16, 'max_memory': '1GB'}, 'max_memory'),
                           ({'tile_size': 16, 'overlap': 4}, 'overlap'),
                           ({'tile_size': 16, 'batch_size': 0}, 'batch_size')]:
        with pytest.raises(ValueError, match=message):
            TileOptions.from_opt(block, 'val.tile')
    assert parse_memory_size('512MB') == 512 * 10**6 and parse_memory_size(1000) == 1000
    with pytest.raises(ValueError, match='max_memory'):
        parse_memory_size('lots')


def test_peak_memory_tracker_counts_tensors_alive_together():
    x = torch.rand(1000)
    with PeakMemoryTracker() as tracker:
        a = x * 2  # 4000 B
        b = a + 1  # 8000 B alive
        del a
        c = b.view(10, 100) + 0  # b and c alive: 8000 B, not more
        del b, c
        d = torch.empty(3000)  # 12000 B, after everything above was freed
        del d
    assert tracker.peak_bytes == 12000
    assert tracker.live_bytes == 0


def test_auto_tile_size_fits_the_budget():
    net = conv_net()
    peak = lambda side: measure_peak_memory(lambda: net(torch.rand(1, 3, side, side)), 'cpu')  # noqa: E731
    with torch.no_grad():
        budget = peak(80)
        side = auto_tile_size(net, 3, budget, 'cpu', multiple=8)
        assert side % 8 == 0 and side >= 72
        assert peak(side) <= budget < peak(side + 8)
        with pytest.raises(ValueError, match='too small'):
            auto_tile_size(net, 3, 1000, 'cpu')
    tiler = Tiler(TileOptions(None, tile_pad=8, max_memory=budget), multiple=8)
    x = torch.rand(1, 3, 120, 100)
    with torch.no_grad():
        assert (tiler(net, x, 2) - net(x)).abs().max() < 1e-3
    assert tiler.tile_size <= side and tiler.choice is not None  # CPU: the fastest tile within the budget, kept


# ---------------------------------------------------------------------------------------------- the model

def tiny_model(**opt_overrides):
    golden = load_golden('hat_tiny_x2')
    opt = {'model_type': 'SRArchModel', 'scale': 2, 'num_gpu': 0, 'is_train': False, 'dist': False, 'name': 'tiny',
           'pad_multiple': golden['kwargs']['window_size'], 'network_g': {'type': 'HAT', **golden['kwargs']},
           'path': {}, 'val': {}}
    opt.update(opt_overrides)
    model = build_model(opt)
    model.net_g.load_state_dict(golden['state_dict'])
    return model


def test_self_ensemble_is_the_mean_of_the_eight_back_transformed_outputs():
    model = tiny_model(val={'self_ensemble': True})
    lq = to_tensor(bicubic_downsample(photo('coffee', 120), 4))[..., :12, :20]  # not a multiple of 8, not square
    model.net_g.train()
    model.lq = lq
    model.test()
    assert model.net_g.training  # back to train mode
    net = model.net_g.eval()
    with torch.no_grad():
        outputs = [dihedral_inverse(padded_forward(net, dihedral_transform(lq, *t), 2, 8), *t)
                   for t in ENSEMBLE_TRANSFORMS]
    expected = torch.stack(outputs).mean(0)
    assert model.output.shape == (1, 3, 24, 40)
    assert (model.output - expected).abs().max() < 1e-5
    assert (outputs[0] - expected).abs().max() > 1e-3  # the ensemble changes the output


def test_val_tile_wins_over_the_top_level_block_and_tiles_inside_the_model():
    lq = to_tensor(bicubic_downsample(photo('chelsea', 160), 2))[..., :40, :48]
    whole = tiny_model()
    whole.lq = lq
    whole.test()
    tiled = tiny_model(tile={'tile_size': 24, 'tile_pad': 8})
    tiled.lq = lq
    tiled.test()
    val_tile = tiny_model(tile={'tile_size': 24, 'tile_pad': 8}, val={'tile': {'tile_size': 64}})
    val_tile.lq = lq
    val_tile.test()
    assert torch.equal(val_tile.output, whole.output)  # val.tile (one tile) overrides the top-level block
    difference = (tiled.output - whole.output).abs()
    assert difference.max() > 1e-6 and difference.mean() < 0.02  # tiled: differs a little near tile borders
    assert tiled.output.shape == whole.output.shape == (1, 3, 80, 96)


# ---------------------------------------------------------------------------------------------- profile

def test_profile_counts_macs_and_prints_a_table(capsys):
    from sr_arch import profile

    net = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert profile.count_macs(net, torch.rand(1, 3, 10, 12)) == 8 * 3 * 9 * 10 * 12
    code = profile.main(['--arch', 'GRFormer', '--scale', '2', '--size', '16x24', '--repeats', '1', '--warmup', '0',
                         '--kwargs', '{"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": [4, 8]}'])
    table = capsys.readouterr().out
    assert code == 0
    row = [line for line in table.splitlines() if line.startswith('| GRFormer-light')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1:3] == ['x2', '1x16x24']
    assert float(cells[4]) > 0 and float(cells[5]) > 0 and float(cells[6]) > 0  # MACs, latency, memory
