"""``sr-arch demo``: a smoke run end to end (data -> LMDB -> train.py pipeline -> table and PNGs), and its pieces."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import pytest

from helpers import ONE_THREAD, REPO_ROOT, SUBPROCESS_TIMEOUT
from sr_arch import demo
from sr_arch.data.prepare.lmdb_store import read_meta_info


def test_demo_smoke_run_writes_table_and_side_by_side_png(tmp_path):
    heldout = 64
    command = [sys.executable, '-m', 'sr_arch', 'demo', '--out', str(tmp_path), '--iters', '2', '--train-size', '96',
               '--heldout-size', str(heldout), '--force_yml', 'datasets:train:batch_size_per_gpu=2',
               'datasets:train:num_worker_per_gpu=0']
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **ONE_THREAD)
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r'^\| (\S+) \| (\d+\.\d\d) / (0\.\d{4}) \| (\d+\.\d\d) / (0\.\d{4}) \| ([+-]\d+\.\d\d) \|$', proc.stdout, re.M)}
    assert sorted(rows) == sorted([*demo.DEMO_HELDOUT_PHOTOS, '**mean**'])
    bicubic_psnr, _, sr_psnr, _, gain = map(float, rows['**mean**'])
    assert 20 < bicubic_psnr < 50 and abs(sr_psnr - bicubic_psnr - gain) < 0.011

    exp = tmp_path / 'experiments' / 'demo_ESRT_x2'
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert list((tmp_path / 'tb_logger' / 'demo_ESRT_x2').glob('events.out.tfevents.*'))
    results = (exp / 'demo' / 'results.md').read_text()
    assert '| **mean** |' in results
    for name in demo.DEMO_HELDOUT_PHOTOS:
        png = cv2.imread(str(exp / 'demo' / f'{name}_x2_bicubic-sr-hr.png'))
        # bicubic | SR | HR with 4-px gaps, each captioned below (name, PSNR / SSIM): wider and taller
        assert png.shape[0] > heldout and png.shape[1] >= 3 * heldout + 2 * 4

    train_keys = read_meta_info(str(tmp_path / 'datasets' / 'demo' / 'train_96px' / 'GTmod2.lmdb'))
    assert sorted(train_keys) == sorted(demo.DEMO_TRAIN_PHOTOS)
    assert not set(train_keys) & set(demo.DEMO_HELDOUT_PHOTOS)


def test_heldout_photos_must_differ_from_training_pixels(tmp_path):
    # scikit-image's ``cat`` is the ``chelsea`` photo under another name
    with pytest.raises(demo.DemoError, match=r"held-out photo\(s\) \['cat'\] are also in the training split"):
        demo.prepare_data(str(tmp_path), 2, 64, 64, train_photos=('chelsea', 'coffee'), heldout_photos=('cat',))


def test_demo_options_follow_the_command_line(tmp_path):
    import yaml

    with open(demo.DEFAULT_OPTIONS) as f:
        base = yaml.safe_load(f)
    data = demo.DemoData('gt.lmdb', 'lq.lmdb', 'gt', 'lq')
    args = demo.build_parser().parse_args(['--scale', '3', '--iters', '40', '--arch', 'GRFormer',
                                           '--force_yml', 'train:optim_g:lr=5e-4'])
    opt = demo.demo_options(base, args, data)
    assert opt['name'] == 'demo_GRFormer_x3' and opt['scale'] == 3
    assert opt['network_g']['type'] == 'GRFormer' and opt['network_g']['upscale'] == 3
    assert opt['network_g']['embed_dim'] == 60  # GRFormer-light
    assert opt['datasets']['train']['gt_size'] == 3 * demo.LR_PATCH
    assert opt['datasets']['train']['dataroot_gt'] == os.path.abspath('gt.lmdb')
    assert opt['train']['total_iter'] == 40 and opt['train']['scheduler']['periods'] == [40]
    assert opt['train']['optim_g']['lr'] == 5e-4
    default = demo.demo_options(base, demo.build_parser().parse_args([]), data)
    assert default['network_g'] == {'type': 'ESRT', 'upscale': 2} and default['name'] == 'demo_ESRT_x2'


def test_unknown_arch_is_a_clear_error(tmp_path, capsys):
    assert demo.main(['--arch', 'NoSuchNet', '--out', str(tmp_path)]) == 1
    assert 'sr-arch demo: error: --arch NoSuchNet: not a registered architecture' in capsys.readouterr().err
    assert not (tmp_path / 'datasets').exists()


def test_table_format():
    scores = [demo.ImageScores('a', 30.0, 0.9, 31.5, 0.92), demo.ImageScores('b', 28.0, 0.8, 28.5, 0.81)]
    lines = demo.format_table(scores, 'ESRT', 2).splitlines()
    assert lines[0] == '| x2 held-out | bicubic PSNR / SSIM | ESRT PSNR / SSIM | gain (dB) |'
    assert lines[-1] == '| **mean** | 29.00 / 0.8500 | 30.00 / 0.8650 | +1.00 |'
