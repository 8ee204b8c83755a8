"""``test.py -opt``: per-dataset and per-image PSNR/SSIM tables (Markdown, CSV, JSON) and SR images."""
import csv
import json
import os

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.registry import ARCH_REGISTRY

from helpers import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    derive_options,
    load_golden,
    make_paired_folder,
    run_script,
    upscale_with,
)
from sr_arch.utils.checkpoint import atomic_save


def test_benchmark_tables_hold_basicsr_metrics_of_each_image(tmp_path):
    golden = load_golden('grformer_tiny_x2')  # a tiny GRFormer x2 with the golden vectors' weights
    atomic_save({'params': golden['state_dict']}, str(tmp_path / 'net.pth'))
    sets = {'Set5': make_paired_folder(str(tmp_path / 'Set5'), 2, HELDOUT_PHOTOS, max_side=40),
            'Set14': make_paired_folder(str(tmp_path / 'Set14'), 2, TRAIN_PHOTOS[:2], max_side=36)}
    derive_options('options/test/GRFormer/test_GRFormer_light_SRx2.yml', {
        'name': 'tiny_benchmark', 'num_gpu': 0,
        'network_g': dict(golden['kwargs']),
        'path': {'pretrain_network_g': str(tmp_path / 'net.pth')},
        'datasets': {'test_1': {'dataroot_gt': sets['Set5'][0], 'dataroot_lq': sets['Set5'][1]},
                     'test_2': {'name': 'Set14', 'dataroot_gt': sets['Set14'][0], 'dataroot_lq': sets['Set14'][1]},
                     'test_3': None, 'test_4': None, 'test_5': None},
    }, str(tmp_path / 'test.yml'))
    run_script('test.py', ['-opt', str(tmp_path / 'test.yml')], cwd=str(tmp_path))
    results = tmp_path / 'results' / 'tiny_benchmark'

    net = ARCH_REGISTRY.get('GRFormer')(**golden['kwargs'])
    net.load_state_dict(golden['state_dict'])
    per_image = json.loads((results / 'per_image.json').read_text())
    summary = json.loads((results / 'summary.json').read_text())
    assert list(summary) == ['Set5', 'Set14'] and set(per_image) == {'Set5', 'Set14'}
    for name, (hr_dir, lr_dir) in sets.items():
        images = sorted(os.listdir(hr_dir))
        assert sorted(f'{image}.png' for image in per_image[name]) == images
        for filename in images:
            stem = filename[:-4]
            hr = cv2.imread(os.path.join(hr_dir, filename))
            lr = cv2.imread(os.path.join(lr_dir, filename))[..., ::-1]
            sr = upscale_with(net, np.ascontiguousarray(lr))[..., ::-1]  # computed here, not by the pipeline
            saved = cv2.imread(str(results / 'visualization' / name / f'{stem}_tiny_benchmark.png'))
            assert np.array_equal(saved, sr)
            psnr = calculate_psnr(sr, hr, crop_border=2, test_y_channel=True)
            ssim = calculate_ssim(sr, hr, crop_border=2, test_y_channel=True)
            assert abs(per_image[name][stem]['psnr'] - psnr) < 1e-6
            assert abs(per_image[name][stem]['ssim'] - ssim) < 1e-6
        for metric in ('psnr', 'ssim'):
            mean = np.mean([values[metric] for values in per_image[name].values()])
            assert abs(summary[name][metric] - mean) < 1e-9

    with open(results / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['dataset'], int(r['images'])) for r in rows] == [('Set5', 3), ('Set14', 2)]
    assert all(abs(float(r['psnr']) - summary[r['dataset']]['psnr']) < 1e-9 for r in rows)
    with open(results / 'per_image.csv') as f:
        assert len(list(csv.DictReader(f))) == 5
    markdown = (results / 'summary.md').read_text()
    assert f"| Set5 | 3 | {summary['Set5']['psnr']:.2f} | {summary['Set5']['ssim']:.4f} |" in markdown
    assert f"| Set14 | 2 | {summary['Set14']['psnr']:.2f} | {summary['Set14']['ssim']:.4f} |" in markdown


def test_gaussian8_width_datasets_are_also_averaged_per_set(tmp_path):
    import logging

    from sr_arch.test import write_gaussian8_averages
    from sr_arch.utils.results import DatasetResult, ImageResult, write_results

    sigmas = [1.8 + 0.2 * i for i in range(8)]
    results = [DatasetResult(f'Set5_sig{s:.2f}', [ImageResult('a', {'psnr': 30 + i, 'ssim': 0.8}, 0.1)])
               for i, s in enumerate(sigmas)]
    results.append(DatasetResult('RealWorld', [ImageResult('b', {'psnr': 20.0, 'ssim': 0.5}, 0.1)]))
    write_results(str(tmp_path), results)
    paths = write_gaussian8_averages(str(tmp_path), results, logging.getLogger('test'))
    by_set = json.loads((tmp_path / 'summary_by_set.json').read_text())
    assert set(paths) == {'summary_by_set.json', 'summary_by_set.csv'}
    assert by_set == {'Set5': {'psnr': 33.5, 'ssim': 0.8}, 'RealWorld': {'psnr': 20.0, 'ssim': 0.5}}
    assert '| Set5 | 33.50 | 0.8000 |' in (tmp_path / 'summary.md').read_text()
    # a run that misses widths gets no average (it would not be a Gaussian8 number)
    assert write_gaussian8_averages(str(tmp_path / 'partial'), results[:3], logging.getLogger('test')) == {}


def test_tables_of_a_dataset_without_ground_truth(tmp_path):
    from sr_arch.utils.results import DatasetResult, ImageResult, write_results

    results = [DatasetResult('Set5', [ImageResult('a', {'psnr': 30.0, 'ssim': 0.9}, 0.5)]),
               DatasetResult('RealWorld38', [ImageResult('x', {}, 1.0), ImageResult('y', {}, 3.0)])]
    write_results(str(tmp_path), results, 'demo')
    assert json.loads((tmp_path / 'summary.json').read_text()) == {'Set5': {'psnr': 30.0, 'ssim': 0.9},
                                                                   'RealWorld38': {}}
    markdown = (tmp_path / 'summary.md').read_text()
    assert '| RealWorld38 | 2 | - | - | 2.000 |' in markdown and '| Set5 | 1 | 30.00 | 0.9000 | 0.500 |' in markdown
    assert (tmp_path / 'summary.csv').read_text().splitlines()[2] == 'RealWorld38,2,,,2.0'
