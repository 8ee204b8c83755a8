"""``tile_size: auto`` on CPU picks the fastest tile (``fastest_tile_size``), within ``max_memory`` if given."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import photo
from sr_arch.archs import FAMILIES
from sr_arch.utils.tiling import TileOptions, Tiler, auto_tile_size, fastest_tile_size, tiled_forward, tiles_per_image


def upscale2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode='nearest')


def cost_timer(overhead: float, linear: float, quadratic: float, calls: list | None = None):
    """A deterministic timer: ``overhead + linear * area + quadratic * area**2`` seconds per forward call."""
    def timer(forward, tile):
        area = tile.shape[-2] * tile.shape[-1]
        if calls is not None:
            calls.append(tuple(tile.shape[-2:]))
        return overhead + linear * area + quadratic * area * area
    return timer


def test_tiles_per_image_matches_tiled_forward():
    counted = []
    lq = torch.rand(1, 3, 100, 70)
    tiled_forward(lambda x: counted.append(x.shape) or upscale2(x), lq, 2, tile_size=32, overlap=8)
    assert tiles_per_image(100, 70, 32, 8) == len(counted) == 4 * 3  # rows start at 0, 24, 48, 68
    assert tiles_per_image(100, 70, 128, 8) == 1 and tiles_per_image(100, 70, 70, 8) == 2


def test_quadratic_cost_picks_a_small_tile():
    """ESRT-like: attention over bands of the whole image, cost quadratic in the area."""
    calls = []
    choice = fastest_tile_size(upscale2, torch.rand(1, 3, 300, 260), overlap=16, multiple=4,
                               timer=cost_timer(1e-3, 1e-6, 1e-9, calls))
    # probed at the candidates up to 128 (after one warm-up call, not timed), the rest predicted
    assert calls == [(48, 48), (64, 64), (96, 96), (128, 128)]
    whole = choice.predicted[choice.whole]
    assert choice.whole == 300 and whole == pytest.approx(1e-3 + 1e-6 * 78000 + 1e-9 * 78000 ** 2, rel=1e-6)
    assert choice.side == min(choice.predicted, key=choice.predicted.get) and choice.side < 192
    assert choice.predicted[choice.side] < whole / 4
    assert 'whole image' in choice.describe() and str(choice.side) in choice.describe()


def test_linear_cost_with_overhead_runs_the_whole_image():
    """Window attention / convolutions: cost linear in the area, so overlap and per-call overhead decide."""
    choice = fastest_tile_size(upscale2, torch.rand(1, 3, 300, 260), overlap=16, multiple=4,
                               timer=cost_timer(2e-2, 1e-6, 0.0))
    assert choice.side == choice.whole == 300
    assert all(choice.predicted[side] > choice.predicted[300] for side in choice.predicted if side != 300)


def test_memory_limit_and_small_images():
    calls = []
    capped = fastest_tile_size(upscale2, torch.rand(1, 3, 300, 260), overlap=16, multiple=8, largest=100,
                               timer=cost_timer(2e-2, 1e-6, 0.0, calls))
    assert set(capped.predicted) == {48, 64, 96} and capped.side == 96  # the whole image does not fit
    calls.clear()
    small = fastest_tile_size(upscale2, torch.rand(1, 3, 40, 30), overlap=16, timer=cost_timer(1, 1, 1, calls))
    assert small.side == small.whole == 40 and not calls  # nothing to choose: not even probed


def test_a_real_network_on_a_photo_crop_and_the_tiler_reports_its_choice():
    net = FAMILIES['ESRT'].build('ESRT', 2).eval()  # the published network: its band attention is quadratic
    lq = torch.from_numpy(photo('astronaut', 96)[:, :72]).permute(2, 0, 1)[None].float() / 255
    tiler = Tiler(TileOptions.from_opt({'tile_size': 'auto', 'tile_pad': 8}), multiple=2)
    with torch.no_grad():
        out = tiler(net, lq, 2)
        reference = tiled_forward(net, lq, 2, tiler.tile_size, 8)
    assert torch.equal(out, reference) and out.shape == (1, 3, 192, 144)
    assert tiler.choice is not None and tiler.tile_size == tiler.choice.side
    assert set(tiler.choice.predicted) == {48, 64, 96} and all(t > 0 for t in tiler.choice.predicted.values())
    assert tiler.auto_reason == f'the fastest: {tiler.choice.describe()}'
    first = tiler.choice
    with torch.no_grad():
        tiler(net, lq[..., :40, :40], 2)
    assert tiler.choice is first  # decided once, on the first image


def test_max_memory_bounds_the_fastest_tile():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 12, 3, padding=1),
                              torch.nn.PixelShuffle(2))
    with torch.no_grad():
        budget_side = auto_tile_size(net, 3, 2 * 2 ** 20, 'cpu', multiple=8)
        tiler = Tiler(TileOptions.from_opt({'tile_size': 'auto', 'max_memory': '2MiB', 'tile_pad': 4}), multiple=8)
        tiler(net, torch.rand(1, 3, budget_side + 60, budget_side + 20), 2)
    assert 64 <= budget_side and tiler.tile_size <= budget_side and max(tiler.choice.predicted) <= budget_side


def test_tile_options_auto_needs_no_memory_budget_but_a_budget_needs_auto():
    assert TileOptions.from_opt({'tile_size': 'auto'}) == TileOptions(None, 32, 1, None)
    with pytest.raises(ValueError, match=r"tile.max_memory only applies to tile_size: auto \(tile_size is 64\)"):
        TileOptions.from_opt({'tile_size': 64, 'max_memory': '1GB'})


def test_infer_cli_tile_auto_prints_the_chosen_tile(tmp_path, capsys):
    import cv2

    from sr_arch import infer
    from sr_arch.utils.checkpoint import atomic_save

    torch.manual_seed(0)
    net = FAMILIES['GRFormer'].cls(**FAMILIES['GRFormer'].tiny, upscale=2)
    atomic_save({'params': net.state_dict()}, str(tmp_path / 'tiny.pth'))
    image = str(tmp_path / 'in.png')
    cv2.imwrite(image, photo('coffee', 100)[:100, :70, ::-1].copy())
    assert infer.main(['--model', str(tmp_path / 'tiny.pth'), image, '--out', str(tmp_path / 'out'),
                       '--tile', 'auto', '--tile-pad', '8']) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if 'tile auto' in line]
    assert len(lines) == 1 and lines[0].startswith('sr-arch infer: --tile auto chose ')
    assert '(the fastest: ' in lines[0] and lines[0].endswith('; measured on cpu)')
    assert 'predicted per image' in lines[0] and 'whole image' in lines[0]
    assert cv2.imread(str(tmp_path / 'out' / 'in.png')).shape == (200, 140, 3)
