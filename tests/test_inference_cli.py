"""``sr-arch infer``: checkpoint layouts, image formats, and one-line errors that do not stop the batch."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from helpers import golden_cases, golden_tolerance, load_golden, photo
from sr_arch import infer
from sr_arch.archs import FAMILIES, family_spec
from sr_arch.archs.spec import NETWORK_KWARGS_KEY
from sr_arch.utils.checkpoint import atomic_save
from sr_arch.utils.tiling import auto_tile_size

LAYOUTS = ('params_ema', 'params', 'raw', 'module.')
GOLDEN_CASES = [case for family in FAMILIES for case in golden_cases(family)]


def save_layout(state_dict: dict, layout: str, path: str) -> str:
    """Save ``state_dict`` the way a user's file may hold it."""
    if layout == 'params_ema':  # with a different 'params' beside it: params_ema must win
        obj = {'params_ema': state_dict, 'params': {k: v + 1 if v.is_floating_point() else v
                                                    for k, v in state_dict.items()}}
    elif layout == 'params':
        obj = {'params': state_dict}
    elif layout == 'raw':
        obj = dict(state_dict)
    else:
        obj = {f'module.{k}': v for k, v in state_dict.items()}
    atomic_save(obj, path)
    return path


@pytest.mark.parametrize('index', range(len(GOLDEN_CASES)), ids=GOLDEN_CASES)
def test_golden_checkpoint_gives_the_golden_output_through_infer_loading(tmp_path, index):
    """Every golden case once, the four layouts in turn (each layout is used by two or more families)."""
    case, layout = GOLDEN_CASES[index], LAYOUTS[index % len(LAYOUTS)]
    golden = load_golden(case)
    path = save_layout(golden['state_dict'], layout, str(tmp_path / f'{case}.pth'))
    spec = family_spec(golden['family'])
    # the golden vectors ran the official code under a current torchvision: our constructor defaults
    environment = {k: spec.full_kwargs(golden['kwargs'])[k] for k in spec.checkpoint.stored_kwargs}
    model = infer.load_model(path, arch_options=environment)
    assert model.detection.family == golden['family']
    with torch.no_grad():
        output = model.forward(golden['input'])
    assert (output - golden['output']).abs().max() <= golden_tolerance(golden['output'])


@pytest.mark.parametrize('case', ['hat_tiny_x2', 'rgt_tiny_x2'])
def test_infer_runs_any_size_and_tiles_in_multiples_of_the_window(tmp_path, case):
    """HAT pads to multiples of its window, RGT to at least 16x16 (both inside the network): 9x13 works."""
    golden = load_golden(case)
    model = infer.load_model(save_layout(golden['state_dict'], 'params', str(tmp_path / f'{case}.pth')))
    with torch.no_grad():
        output = model.forward(torch.rand(1, 3, 9, 13))
    assert model.pad_multiple == (8 if case.startswith('hat') else 1)
    assert output.shape == (1, 3, 18, 26) and torch.isfinite(output).all()


def test_labnet_residual_mode_comes_from_the_checkpoint_or_the_official_convention(tmp_path):
    """Official LabNet weights (no stored mode) were trained under torchvision 0.12: no antialiasing. Our
    checkpoints store the mode they were trained with; --arch-option overrides either."""
    golden = load_golden('labnet_nf16_x4')
    official = save_layout(golden['state_dict'], 'params', str(tmp_path / 'official.pth'))
    ours = str(tmp_path / 'ours.pth')
    atomic_save({'params': golden['state_dict'], NETWORK_KWARGS_KEY: {'residual_antialias': True}}, ours)
    assert infer.load_model(official).net.residual_antialias is False
    assert infer.load_model(ours).net.residual_antialias is True
    assert infer.load_model(official, arch_options={'residual_antialias': True}).net.residual_antialias is True
    with pytest.raises(infer.InferenceError, match=r'--arch-option residual_antialas: not an argument of LabNet'):
        infer.load_model(official, arch_options={'residual_antialas': True})
    assert infer.parse_arch_options(['residual_antialias=false']) == {'residual_antialias': False}
    with pytest.raises(infer.InferenceError, match='expected KEY=VALUE'):
        infer.parse_arch_options(['residual_antialias'])


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tiny GRFormer x2 (golden weights; any input size)."""
    path = str(tmp_path_factory.mktemp('ckpt') / 'grformer_tiny_x2.pth')
    return save_layout(load_golden('grformer_tiny_x2')['state_dict'], 'params', path)


def write(path, img) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return str(path)


def expected_sr(checkpoint: str, rgb01: np.ndarray) -> np.ndarray:
    """What the network gives for an RGB image in [0, 1], as float RGB in [0, 1]."""
    model = infer.load_model(checkpoint)
    with torch.no_grad():
        out = model.forward(torch.from_numpy(rgb01).permute(2, 0, 1)[None].float())
    return out[0].clamp(0, 1).permute(1, 2, 0).numpy()


def test_formats_bit_depths_gray_and_alpha(tmp_path, checkpoint):
    src = photo('coffee', 48)[:20, :28]  # uint8 RGB, 20x28
    bgr = np.ascontiguousarray(src[..., ::-1])
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    alpha = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (20, 1))
    folder = tmp_path / 'in'
    inputs = {
        'rgb8.png': write(folder / 'rgb8.png', bgr),
        'rgb16.tif': write(folder / 'deep' / 'rgb16.tif', bgr.astype(np.uint16) * 257),
        'gray.jpg': write(folder / 'gray.jpg', gray),
        'gray16.png': write(folder / 'gray16.png', gray.astype(np.uint16) * 257),
        'rgba.png': write(folder / 'rgba.png', np.dstack([bgr, alpha])),
        'photo.webp': write(folder / 'photo.webp', bgr),
    }
    out = tmp_path / 'out'
    assert infer.main(['--model', checkpoint, str(folder), '--out', str(out)]) == 0

    results = {name: cv2.imread(str(out / 'in' / os.path.relpath(path, folder)), cv2.IMREAD_UNCHANGED)
               for name, path in inputs.items()}
    assert results['rgb8.png'].shape == (40, 56, 3) and results['rgb8.png'].dtype == np.uint8
    sr = expected_sr(checkpoint, src.astype(np.float32) / 255)
    assert np.abs(results['rgb8.png'][..., ::-1].astype(float) - np.round(sr * 255)).max() <= 1
    assert results['rgb16.tif'].dtype == np.uint16 and results['rgb16.tif'].shape == (40, 56, 3)
    assert np.abs(results['rgb16.tif'][..., ::-1] / 65535 - sr).max() < 2e-5  # 16-bit kept, same pixels
    assert results['gray.jpg'].shape == (40, 56)  # grayscale in, grayscale out
    assert results['gray16.png'].shape == (40, 56) and results['gray16.png'].dtype == np.uint16
    rgba = results['rgba.png']
    assert rgba.shape == (40, 56, 4)
    bicubic_alpha = cv2.resize(alpha.astype(np.float32) / 255, (56, 40), interpolation=cv2.INTER_CUBIC)
    assert np.abs(rgba[..., 3] / 255 - np.clip(bicubic_alpha, 0, 1)).max() <= 0.5 / 255 + 1e-6
    assert np.abs(rgba[..., 2::-1].astype(float) - np.round(sr * 255)).max() <= 1  # colour as without alpha
    assert results['photo.webp'].shape == (40, 56, 3)


def test_bad_inputs_get_one_line_each_and_the_batch_goes_on(tmp_path, checkpoint, capsys):
    good = write(tmp_path / 'in' / 'good.png', photo('chelsea', 32)[..., ::-1].copy())
    broken = tmp_path / 'in' / 'broken.png'
    broken.write_text('not an image')
    empty = tmp_path / 'empty'
    empty.mkdir()
    single = write(tmp_path / 'single.jpg', photo('rocket', 24))
    out = tmp_path / 'out'
    code = infer.main(['--model', checkpoint, str(tmp_path / 'in'), str(empty), single, str(tmp_path / 'nothing.png'),
                       '--out', str(out), '--suffix', '_x2', '--ext', 'png'])
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert code == 1
    assert len(errors) == 3
    assert any(str(broken) in line and 'not a readable image' in line for line in errors)
    assert any(str(empty) in line and 'no images' in line for line in errors)
    assert any('nothing.png' in line and 'no such file' in line for line in errors)
    assert cv2.imread(str(out / 'in' / 'good_x2.png')).shape == (64, 64, 3)
    assert cv2.imread(str(out / 'single_x2.png')).shape == (48, 48, 3)
    assert os.path.exists(good)


def test_checkpoint_of_another_network_or_scale_is_one_line_naming_it(tmp_path, checkpoint, capsys):
    from basicsr.archs.srresnet_arch import MSRResNet

    image = write(tmp_path / 'a.png', photo('astronaut', 16))
    other = str(tmp_path / 'srresnet.pth')
    atomic_save({'params': MSRResNet(num_feat=8, num_block=1, upscale=2).state_dict()}, other)
    assert infer.main(['--model', other, image, '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'closest' in err[0]
    assert err[0].startswith(f'sr-arch infer: error: {other}: not a checkpoint of')

    assert infer.main(['--model', checkpoint, image, '--out', str(tmp_path / 'o'), '--scale', '4']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and checkpoint in err[0] and 'x2' in err[0] and 'x4' in err[0]

    modified = dict(load_golden('hat_tiny_x2')['state_dict'])
    del modified['conv_last.bias']
    atomic_save(modified, str(tmp_path / 'modified.pth'))
    assert infer.main(['--model', str(tmp_path / 'modified.pth'), image, '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'modified.pth: looks like HAT' in err[0] and '1 missing (conv_last.bias)' in err[0]
    assert not os.path.exists(tmp_path / 'o')


@pytest.mark.parametrize('options', [['--tile', '12', '--tile-pad', '4', '--tile-batch', '3'], ['--ensemble']])
def test_tile_and_ensemble_options_reach_the_inference(tmp_path, checkpoint, options):
    from sr_arch.models.inference import super_resolve
    from sr_arch.utils.tiling import TileOptions, Tiler

    lr = photo('astronaut', 40)[:20, :18]
    image = write(tmp_path / 'in.png', lr[..., ::-1].copy())
    out = tmp_path / 'out'
    assert infer.main(['--model', checkpoint, image, '--out', str(out)] + options) == 0
    written = cv2.imread(str(out / 'in.png'))[..., ::-1].astype(float)
    model = infer.load_model(checkpoint)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    tiler = Tiler(TileOptions(12, 4, 3)) if '--tile' in options else None
    with torch.no_grad():
        plain = model.forward(x)
        expected = super_resolve(model.forward, x, 2, tiler, self_ensemble='--ensemble' in options)
    to_uint8 = lambda t: np.round(t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255)  # noqa: E731
    assert written.shape == (40, 36, 3)
    assert np.abs(written - to_uint8(expected)).max() <= 1
    assert np.abs(written - to_uint8(plain)).max() > 2  # the option did change the output


def error_lines(text: str) -> list[str]:
    """Lines of stderr that are errors (the progress bar writes there too, with carriage returns)."""
    return [line for line in text.replace('\r', '\n').splitlines() if 'error:' in line]


def test_a_model_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, checkpoint, capsys):
    image = write(tmp_path / 'in.png', photo('astronaut', 16))
    with open(checkpoint, 'rb') as f:
        data = f.read()
    files = {'photo.png': write(tmp_path / 'photo.png', photo('coffee', 16)),
             'notes.txt': tmp_path / 'notes.txt', 'page.pth': tmp_path / 'page.pth',
             'cut.pth': tmp_path / 'cut.pth', 'empty.pth': tmp_path / 'empty.pth'}
    files['notes.txt'].write_text('name: my run\nscale: 4\n')
    files['page.pth'].write_text('<!DOCTYPE html>\n<html><body>404 Not Found</body></html>')
    files['cut.pth'].write_bytes(data[:len(data) // 2])
    files['empty.pth'].write_bytes(b'')
    expected = {'photo.png': 'not a checkpoint, it is a PNG image',
                'notes.txt': "not a checkpoint, it is a text file (22 bytes, starting 'name: my run scale: 4')",
                'page.pth': 'not a checkpoint, it is an HTML page (a failed download? fetch the file itself)',
                'cut.pth': f'truncated or damaged checkpoint ({len(data) // 2} bytes;',
                'empty.pth': 'not a checkpoint, it is an empty file (0 bytes)'}
    for name, path in files.items():
        assert infer.main(['--model', str(path), image, '--out', str(tmp_path / 'out')]) == 2
        captured = capsys.readouterr()
        errors = error_lines(captured.err)
        assert len(errors) == 1 and errors[0].startswith(f'sr-arch infer: error: {path}: {expected[name]}'), errors
        assert 'weights_only' not in captured.err + captured.out and 'pickle' not in errors[0]
    assert not (tmp_path / 'out').exists()


def test_tile_errors_name_real_flags_and_auto_prints_its_size(tmp_path, checkpoint, capsys):
    lr = photo('astronaut', 40)[:24, :20]
    image = write(tmp_path / 'in.png', lr[..., ::-1].copy())
    out = str(tmp_path / 'out')
    for options, message in [(['--tile', '8', '--tile-pad', '8'], '--tile-pad (8) must be smaller than --tile (8)'),
                             (['--tile', 'auto', '--max-memory', 'lots'], '--max-memory must be a positive size'),
                             (['--max-memory', '1GB'], '--max-memory is the budget of --tile auto')]:
        assert infer.main(['--model', checkpoint, image, '--out', out, *options]) == 2
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0] and 'tile.' not in errors[0], errors
    assert infer.main(['--model', checkpoint, image, '--out', out, '--tile', 'auto', '--max-memory', '1KB']) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and '--max-memory (1000 B) is too small: a 32x32 tile already needs' in errors[0]

    assert infer.main(['--model', checkpoint, image, '--out', out, '--tile', 'auto', '--max-memory', '64MB']) == 0
    chosen = [line for line in capsys.readouterr().err.replace('\r', '\n').splitlines() if 'chose' in line]
    assert len(chosen) == 1
    side = int(re.search(r'--tile auto chose (\d+)x\1 LR tiles \(the fastest, within --max-memory 61 MiB: .*; '
                         r'measured on cpu\)', chosen[0]).group(1))
    model = infer.load_model(checkpoint)
    assert side <= auto_tile_size(model.forward, 3, 64 * 10**6, 'cpu', multiple=model.pad_multiple)


def test_an_output_format_that_drops_alpha_or_depth_is_warned_per_file(tmp_path, checkpoint, capsys):
    bgr = np.ascontiguousarray(photo('coffee', 48)[:20, :28, ::-1])
    alpha = np.full((20, 28), 128, np.uint8)
    rgba = write(tmp_path / 'in' / 'rgba.png', np.dstack([bgr, alpha]))
    deep = write(tmp_path / 'in' / 'deep.png', bgr.astype(np.uint16) * 257)
    plain = write(tmp_path / 'in' / 'plain.png', bgr)
    out = tmp_path / 'out'
    assert infer.main(['--model', checkpoint, str(tmp_path / 'in'), '--out', str(out), '--ext', 'jpg']) == 0
    warnings = sorted(line for line in capsys.readouterr().err.replace('\r', '\n').splitlines() if 'warning' in line)
    assert warnings == [f'sr-arch infer: warning: {deep}: .jpg drops 16-bit depth (written as 8 bit); use --ext .png '
                        'or .tif to keep everything',
                        f'sr-arch infer: warning: {rgba}: .jpg drops its alpha channel; use --ext .png or .tif to '
                        'keep everything']
    for name in ('rgba', 'deep', 'plain'):
        written = cv2.imread(str(out / 'in' / f'{name}.jpg'), cv2.IMREAD_UNCHANGED)
        assert written.shape == (40, 56, 3) and written.dtype == np.uint8
    assert infer.main(['--model', checkpoint, rgba, deep, plain, '--out', str(out / 'png'), '--ext', '.png']) == 0
    assert 'warning' not in capsys.readouterr().err
    assert infer.main(['--model', checkpoint, plain, '--out', str(out), '--ext', '.jxl']) == 2
    assert '--ext .jxl: not a format this command writes' in capsys.readouterr().err
