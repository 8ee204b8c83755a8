"""Benchmarking like the papers: Bicubic network, published numbers and the paper table, MACs, test.py checks,
``sr-arch compare`` figures."""
from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch.overrides import TorchFunctionMode

from helpers import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    bicubic_downsample,
    bicubic_upscale,
    derive_options,
    load_golden,
    make_paired_folder,
    photo,
    psnr_y,
)
from sr_arch.archs.bicubic_arch import Bicubic, matlab_resize
from sr_arch.utils.checkpoint import atomic_save
from sr_arch.utils.options import OptionError


def to_chw(img_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img_uint8.astype(np.float32) / 255.0).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------- Bicubic network


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_network_equals_basicsr_imresize_on_photos_batched_and_unbatched(scale):
    from basicsr.utils.matlab_functions import imresize

    net = Bicubic(scale)
    sizes = [(37, 53), (40, 40), (1, 5), (2, 3)]  # odd, square, and sides smaller than the kernel
    for h, w in sizes:
        images = [photo(name)[60:60 + h, 90:90 + w] for name in ('astronaut', 'chelsea')]
        batch = torch.stack([to_chw(img) for img in images])
        out = net(batch)
        assert out.shape == (2, 3, scale * h, scale * w)
        for index, img in enumerate(images):
            if min(h, w) >= 3:  # basicsr's own symmetric padding breaks on 1-2 px sides
                reference = torch.from_numpy(imresize(img.astype(np.float32) / 255.0, scale)).permute(2, 0, 1)
                assert (out[index] - reference).abs().max() < 2e-6
            single = net(to_chw(img))  # unbatched (C, H, W)
            assert torch.allclose(single, out[index], atol=1e-6)
    flat = torch.full((1, 3, 5, 7), 0.25)  # interpolation weights sum to 1, borders mirrored
    assert torch.allclose(net(flat), torch.full((1, 3, 5 * scale, 7 * scale), 0.25), atol=1e-6)


def test_matlab_resize_downscaling_has_basicsr_antialias():
    from basicsr.utils.matlab_functions import imresize

    img = photo('coffee')[:67, :81]
    for factor in (1 / 2, 1 / 3, 1 / 4):
        reference = torch.from_numpy(imresize(img.astype(np.float32) / 255.0, factor)).permute(2, 0, 1)
        ours = matlab_resize(to_chw(img), factor)
        assert ours.shape == reference.shape and (ours - reference).abs().max() < 2e-6
    plain = matlab_resize(to_chw(img), 1 / 4, antialias=False)
    assert (plain - matlab_resize(to_chw(img), 1 / 4)).abs().max() > 0.05  # the kernel is really stretched


def test_bicubic_network_has_no_weights_and_rejects_a_bad_scale():
    assert Bicubic(3).state_dict() == {} and not list(Bicubic(3).parameters())
    assert ARCH_REGISTRY.get('Bicubic') is Bicubic
    for bad in (0, 2.5, True, '4'):
        with pytest.raises(ValueError, match='Bicubic: upscale must be a positive integer'):
            Bicubic(bad)
    with pytest.raises(ValueError, match=r'expected \(B, C, H, W\) or \(C, H, W\)'):
        Bicubic(2)(torch.rand(5))


def test_bicubic_option_file_scores_basicsr_bicubic_and_prints_the_published_row(tmp_path, monkeypatch):
    """options/test/Bicubic on photo 'sets' (folders of the other sets absent): our Bicubic network + test.py
    metrics against basicsr's imresize + calculate_psnr computed here; paper.md beside the published row."""
    from sr_arch import test as test_pipeline

    scale = 3
    sets = {'Set5': make_paired_folder(str(tmp_path / 'Set5'), scale, HELDOUT_PHOTOS, max_side=60),
            'Set14': make_paired_folder(str(tmp_path / 'Set14'), scale, TRAIN_PHOTOS[:2], max_side=48)}
    derive_options('options/test/Bicubic/test_Bicubic_SRx3.yml', {
        'num_gpu': 0,
        'datasets': {'test_1': {'dataroot_gt': sets['Set5'][0], 'dataroot_lq': sets['Set5'][1]},
                     'test_2': {'dataroot_gt': sets['Set14'][0], 'dataroot_lq': sets['Set14'][1]}},
    }, str(tmp_path / 'bicubic.yml'))
    monkeypatch.chdir(tmp_path)
    # test_3..5 point at datasets/benchmark/... which do not exist here: --sets skips them before validation
    assert test_pipeline.main(['-opt', str(tmp_path / 'bicubic.yml'), '--sets', 'set5,Set14']) == 0

    results = tmp_path / 'results' / 'test_Bicubic_SRx3'
    per_image = json.loads((results / 'per_image.json').read_text())
    assert set(per_image) == {'Set5', 'Set14'}
    for set_name, (hr_dir, lr_dir) in sets.items():
        for filename in sorted(os.listdir(hr_dir)):
            hr = cv2.imread(os.path.join(hr_dir, filename))[..., ::-1]
            lr = cv2.imread(os.path.join(lr_dir, filename))[..., ::-1]
            expected = psnr_y(bicubic_upscale(np.ascontiguousarray(lr), scale), np.ascontiguousarray(hr), scale)
            assert abs(per_image[set_name][filename[:-4]]['psnr'] - expected) < 2e-3
    summary = json.loads((results / 'summary.json').read_text())
    paper = json.loads((results / 'paper.json').read_text())
    assert paper['sets'] == ['Set5', 'Set14']
    ours, published, difference = paper['rows']
    assert ours['label'] == 'Bicubic (ours)' and published['label'] == 'Bicubic (published)'
    assert published['values']['Set5'] == {'psnr': 30.39, 'ssim': 0.8682}  # x3 Set5, the literature's row
    assert ours['values']['Set14']['psnr'] == pytest.approx(summary['Set14']['psnr'])
    assert difference['values']['Set5']['psnr'] == pytest.approx(summary['Set5']['psnr'] - 30.39)
    markdown = (results / 'paper.md').read_text()
    assert '| Bicubic (published) | x3 | 30.39 / 0.8682 | 27.55 / 0.7742 |' in markdown
    assert 'weights none (MATLAB bicubic)' in markdown


# ---------------------------------------------------------------------------------------------- published numbers


def test_published_data_file_covers_every_released_variant_with_sources():
    from sr_arch.archs import FAMILIES
    from sr_arch.utils.published import load_published, published_result

    table = load_published()
    for spec in FAMILIES.values():
        for scale in spec.scales:
            for variant in spec.variants:
                entry = published_result(variant, scale)
                assert entry is not None, f'{variant} x{scale} has no entry (numbers or a "missing" note)'
                assert entry.source or entry.missing
    for (model, scale), entry in table.results.items():
        numbers = [v for pair in entry.values.values() for v in pair if v is not None]
        assert not numbers or entry.source, f'{model} x{scale}'
    # anchors: the Set5 x4 Bicubic row, RGT's README (Urban100 x4), HAT's README (x4 PSNR)
    assert published_result('Bicubic', 4).values['Set5'] == (28.42, 0.8104)
    assert published_result('RGT-S', 4).values['Urban100'] == (27.89, 0.8347)
    assert published_result('RGT', 4).get('Urban100', 'ssim') == 0.8369
    assert published_result('HAT', 4).get('BSD100', 'psnr') == 28.00  # set alias
    assert published_result('HAT-ImageNet', 3).model == 'HAT†'
    assert published_result('GRFormer-light', 4).values == {} and 'no results' in published_result(
        'GRFormer-light', 4).missing
    assert published_result('NoSuchNet', 4) is None


def test_published_data_errors_name_the_entry():
    from sr_arch.utils.published import PublishedDataError, parse_published

    base = {'sets': ['Set5'], 'models': {'X': {'x4': {'Set5': [30.0, 0.9], 'source': 's'}}}}
    assert parse_published(base, 'f.yaml').results[('X', 4)].values == {'Set5': (30.0, 0.9)}
    bad_cases = [
        ({'x4': {'Set5': [30.0, 0.9]}}, 'models.X.x4: numbers without a source'),
        ({'x4': {'Set5': [30.0, 1.2], 'source': 's'}}, r'models.X.x4.Set5: SSIM 1.2 is not a number'),
        ({'x4': {'Set6': [30.0, 0.9], 'source': 's'}}, r"models.X.x4.Set6: not one of the sets \['Set5'\]"),
        ({'x4': {}}, 'models.X.x4: no numbers and no "missing" note'),
        ({'4x': {'source': 's'}}, 'models.X.4x: expected x2 / x3 / x4'),
    ]
    for entry, message in bad_cases:
        with pytest.raises(PublishedDataError, match=f'^f.yaml: {message}'):
            parse_published({**base, 'models': {'X': entry}}, 'f.yaml')


def test_tested_variant_comes_from_the_option_file():
    from helpers import load_options
    from sr_arch.utils.published import variant_of_options

    expected = {'options/test/HAT/test_HAT-S_SRx4.yml': 'HAT-S', 'options/test/HAT/test_HAT_SRx2.yml': 'HAT',
                'options/test/HAT/test_HAT_SRx3_ImageNet-pretrain.yml': 'HAT†',
                'options/test/HAT/test_HAT-L_SRx4_ImageNet-pretrain.yml': 'HAT-L†',
                'options/test/RGT/test_RGT_S_SRx3.yml': 'RGT-S', 'options/test/ESRT/test_ESRT_SRx4.yml': 'ESRT',
                'options/test/GRFormer/test_GRFormer_light_SRx2.yml': 'GRFormer-light',
                'options/test/LabNet/test_LabNet_SRx4_Gaussian8.yml': 'LabNet',
                'options/test/Bicubic/test_Bicubic_SRx2.yml': 'Bicubic',
                'options/test/HAT/test_HAT_GAN_Real_SRx4.yml': None}  # real-world weights: no bicubic-SR row
    for path, variant in expected.items():
        assert variant_of_options(load_options(path)) == variant, path
    rgt = load_options('options/test/RGT/test_RGT_SRx4.yml')
    rgt['val']['self_ensemble'] = True
    assert variant_of_options(rgt) == 'RGT+'
    rgt['network_g']['embed_dim'] = 96  # not a published size
    assert variant_of_options(rgt) is None


def test_paper_table_rows_published_numbers_and_differences():
    from helpers import load_options
    from sr_arch.test import paper_rows
    from sr_arch.utils.results import DatasetResult, ImageResult, paper_table

    def result(name, psnr, ssim):
        return DatasetResult(name, [ImageResult('a', {'psnr': psnr, 'ssim': ssim}, 0.1)])

    opt = load_options('options/test/HAT/test_HAT-S_SRx4.yml')
    ours = [result('Set5', 32.90, 0.9040), result('Urban100', 27.90, 0.8350), result('RealWorld', 20.0, 0.5)]
    bicubic = [result('Set5', 28.41, 0.8103), result('Urban100', 23.15, 0.6577), result('RealWorld', 19.0, 0.4)]
    rows, sets = paper_rows(opt, ours, bicubic)
    assert sets == ['Set5', 'Urban100', 'RealWorld']
    assert [r.label for r in rows] == ['Bicubic (ours)', 'Bicubic (published)', 'Bicubic: ours - published',
                                       'HAT-S (ours)', 'HAT-S (published)', 'HAT-S: ours - published']
    hat_diff = rows[5].values
    assert hat_diff['Set5']['psnr'] == pytest.approx(32.90 - 32.92) and hat_diff['Set5']['ssim'] is None
    assert hat_diff['Urban100']['ssim'] == pytest.approx(0.8350 - 0.8346)
    table = paper_table(rows, sets)
    assert '| HAT-S (published) | x4 | 32.92 / - | 27.87 / 0.8346 | - |' in table
    assert '| *HAT-S: ours - published* | x4 | -0.02 / - | +0.03 / +0.0004 | - |' in table
    assert '| HAT-S (ours) | x4 | 32.90 / 0.9040 | 27.90 / 0.8350 | 20.00 / 0.5000 |' in table
    assert '- HAT-S (published): source: PSNR: chxy95/HAT README' in table
    # an explicit published row, 'none', and a variant without published numbers at that scale
    rows, _ = paper_rows(opt, ours, None, published='RGT-S')
    assert [r.label for r in rows] == ['HAT-S (ours)', 'RGT-S (published)', 'RGT-S: ours - published']
    assert [r.label for r in paper_rows(opt, ours, None, published='none')[0]] == ['HAT-S (ours)']
    opt['scale'] = opt['network_g']['upscale'] = 2
    only, = paper_rows(opt, ours, None)[0]
    assert only.label == 'HAT-S (ours)' and 'nothing published for these sets' in only.note


# ---------------------------------------------------------------------------------------------- test.py checks


def _paired_dataset(hr_dir: str, lr_dir: str, scale: int):
    from basicsr.data import build_dataset

    return build_dataset({'name': 'Set5', 'type': 'PairedImageDataset', 'dataroot_gt': hr_dir, 'dataroot_lq': lr_dir,
                          'io_backend': {'type': 'disk'}, 'phase': 'test', 'scale': scale, 'filename_tmpl': '{}'})


def test_lr_images_of_another_scale_stop_the_run_with_their_names(tmp_path):
    from sr_arch.test import check_lr_sizes, lr_size_problems

    hr_dir, x4_dir = make_paired_folder(str(tmp_path), 4, HELDOUT_PHOTOS, max_side=48)
    dataset = _paired_dataset(hr_dir, x4_dir, 2)  # a x2 test reading the X4 folder
    with pytest.raises(OptionError) as raised:
        check_lr_sizes(dataset, 2, 'test.yml: datasets.test_1')
    message = str(raised.value)
    assert message.startswith("test.yml: datasets.test_1 (Set5): 3 of 3 LR images are not their GT's size / scale 2 "
                              '(they look x4): cat.png: LR 12x12, GT 48x48 / 2 -> 24x24;')
    assert f'Is dataroot_lq ({x4_dir}) the X2 folder?' in message and '\n' not in message
    assert lr_size_problems(_paired_dataset(hr_dir, x4_dir, 4), 4) == []

    # within the mod-crop: a GT that is not a multiple of the scale only needs LR = floor(GT / scale)
    odd = photo('coffee')[:51, :77]
    for name, lr_side in (('ok', (25, 38)), ('bad', (26, 39))):
        os.makedirs(tmp_path / name / 'hr'), os.makedirs(tmp_path / name / 'lr')
        cv2.imwrite(str(tmp_path / name / 'hr' / 'coffee.png'), odd)
        cv2.imwrite(str(tmp_path / name / 'lr' / 'coffee.png'), cv2.resize(odd, lr_side[::-1]))
    assert lr_size_problems(_paired_dataset(str(tmp_path / 'ok' / 'hr'), str(tmp_path / 'ok' / 'lr'), 2), 2) == []
    problem, = lr_size_problems(_paired_dataset(str(tmp_path / 'bad' / 'hr'), str(tmp_path / 'bad' / 'lr'), 2), 2)
    assert problem.describe(2) == 'coffee.png: LR 26x39, GT 51x77 / 2 -> 25x38'


def test_lr_size_check_reads_lmdb_meta_info(tmp_path):
    from sr_arch.data.prepare.lmdb_store import build_lmdb
    from sr_arch.test import lr_size_problems

    hr_dir, x3_dir = make_paired_folder(str(tmp_path), 3, HELDOUT_PHOTOS[:2], max_side=36)
    build_lmdb(hr_dir, str(tmp_path / 'hr.lmdb'))
    build_lmdb(x3_dir, str(tmp_path / 'x3.lmdb'))
    from basicsr.data import build_dataset

    def dataset(scale):
        return build_dataset({'name': 'S', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'hr.lmdb'),
                              'dataroot_lq': str(tmp_path / 'x3.lmdb'), 'io_backend': {'type': 'lmdb'},
                              'phase': 'test', 'scale': scale})
    assert lr_size_problems(dataset(3), 3) == []
    assert [p.lr for p in lr_size_problems(dataset(2), 2)] == [(12, 12), (12, 12)]


def test_a_checkpoint_of_another_scale_is_named_like_sr_arch_infer(tmp_path):
    from sr_arch.test import check_checkpoint_scale

    atomic_save({'params': ARCH_REGISTRY.get('ESRT')(upscale=2).state_dict()}, str(tmp_path / 'esrt_x2.pth'))
    opt = {'opt_path': 'test_ESRT_SRx4.yml', 'scale': 4, 'network_g': {'type': 'ESRT', 'upscale': 4},
           'path': {'pretrain_network_g': str(tmp_path / 'esrt_x2.pth'), 'param_key_g': 'params'}}
    with pytest.raises(OptionError, match=r'esrt_x2.pth: the checkpoint is ESRT x2, it cannot upscale x4 '
                                          r'\(test_ESRT_SRx4.yml has scale: 4; use an x2 test file'):
        check_checkpoint_scale(opt)
    opt['scale'] = opt['network_g']['upscale'] = 2
    check_checkpoint_scale(opt)  # the right scale passes
    opt['network_g']['upscale'] = 3
    with pytest.raises(OptionError, match='network_g.upscale is 3 but scale is 2'):
        check_checkpoint_scale(opt)
    # another network type (e.g. MSRResNet): left to the weight loading, no detection is attempted
    check_checkpoint_scale({**opt, 'scale': 4, 'network_g': {'type': 'MSRResNet'},
                            'path': {'pretrain_network_g': str(tmp_path / 'esrt_x2.pth')}})


def test_sets_flag_and_none_datasets_skip_sets_before_validation(tmp_path):
    from sr_arch.utils.options import parse_options

    hr, lr = make_paired_folder(str(tmp_path / 'Set5'), 4, HELDOUT_PHOTOS[:1], max_side=32)
    options = str(tmp_path / 'hat.yml')
    derive_options('options/test/HAT/test_HAT-S_SRx4.yml', {
        'num_gpu': 0, 'path': {'pretrain_network_g': None},
        'datasets': {'test_1': {'dataroot_gt': hr, 'dataroot_lq': lr}}}, options)

    def parse(*extra):
        return parse_options(str(tmp_path), is_train=False, argv=['-opt', options, *extra])[0]

    with pytest.raises(OptionError, match='datasets.test_2.dataroot_gt'):  # Set14 etc. are not on disk
        parse()
    assert list(parse('--sets', 'SET5')['datasets']) == ['test_1']
    assert list(parse('--force_yml', 'datasets:test_2=~', 'datasets:test_3=~', 'datasets:test_4=~',
                      'datasets:test_5=~')['datasets']) == ['test_1']
    with pytest.raises(OptionError, match=r"--sets 'Set5,Set6': no dataset named Set6 in .*hat.yml \(datasets: "
                                          r'Set5, Set14, B100, Urban100, Manga109\)'):
        parse('--sets', 'Set5,Set6')


def test_progress_bar_is_on_by_default_on_the_main_process():
    from sr_arch.test import prepare_validation_options

    for opt, expected in (({'scale': 2}, True), ({'scale': 2, 'rank': 1}, False),
                          ({'scale': 2, 'val': {'pbar': False}}, False)):
        prepare_validation_options(opt)
        assert opt['val']['pbar'] is expected


def test_per_image_tables_are_sorted_by_name(tmp_path):
    from sr_arch.utils.results import DatasetResult, ImageResult, write_results

    names = ['img_10', 'img_2', 'Img_1', 'b']
    write_results(str(tmp_path), [DatasetResult('S', [ImageResult(n, {'psnr': 30.0}, 0.1) for n in names])])
    expected = ['b', 'Img_1', 'img_2', 'img_10']
    assert [line.split(',')[1] for line in (tmp_path / 'per_image.csv').read_text().splitlines()[1:]] == expected
    assert list(json.loads((tmp_path / 'per_image.json').read_text())['S']) == expected
    markdown = (tmp_path / 'summary.md').read_text()
    assert [markdown.index(f'| {n} |') for n in expected] == sorted(markdown.index(f'| {n} |') for n in expected)


# ---------------------------------------------------------------------------------------------- MACs


class FunctionMacCounter(TorchFunctionMode):
    """An independent MAC count at the torch-function level (not aten ops, not FlopCounterMode): linear,
    conv, matmul and scaled_dot_product_attention calls, from their argument and result shapes."""

    MATMULS = {torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm, torch.mm,
               torch.Tensor.mm}
    ADD_MATMULS = {torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm}

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            self.macs += out.numel() * args[1].shape[1]
        elif func in (F.conv1d, F.conv2d):
            weight = args[1]
            self.macs += out.numel() * math.prod(weight.shape[1:])
        elif func in self.MATMULS:
            self.macs += out.numel() * args[0].shape[-1]
        elif func in self.ADD_MATMULS:  # addmm(bias, a, b): the product's inner size is a's last
            self.macs += out.numel() * args[1].shape[-1]
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]).numel()
            self.macs += batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return out


def _tiny_case(case: str) -> tuple[str, dict, torch.Tensor]:
    """(family, kwargs, input) of the golden vectors' tiny networks; LabNet with one block per stage."""
    if case == 'labnet_tiny_x4':  # the golden LabNet keeps the official 46 blocks: too slow on the meta device
        return 'LabNet', {'nf': 16, 'upscale': 4, 'num_blocks': [1] * 6}, torch.rand(1, 3, 16, 24)
    golden = load_golden(case)
    return golden['family'], golden['kwargs'], golden['input']


@pytest.mark.parametrize('case', ['hat_tiny_x2', 'rgt_tiny_x4', 'grformer_tiny_x4', 'esrt_x2', 'labnet_tiny_x4'])
def test_macs_of_every_family_equal_an_independent_count_whatever_kernels_run(case):
    """Tiny config per family: our count (meta copy, plain formulation) == a torch-function-level count of the
    same forward on the CPU with fused SDPA attention (whose products torch's flop counter cannot see).

    The lean eval paths stay off here: they compute the same function with other work (dilations split into
    phases, GEMMs over padded weights), which is not the network's MACs."""
    from sr_arch.archs.layers import lean_paths
    from sr_arch.utils.macs import network_macs

    family, kwargs, x = _tiny_case(case)
    net = ARCH_REGISTRY.get(family)(**kwargs).eval()
    counter = FunctionMacCounter()
    with torch.no_grad(), lean_paths(False), counter:
        net(x)
    ours = network_macs(net, tuple(x.shape))
    assert ours.device == 'meta' and ours.uncounted == []
    assert ours.total == counter.macs > 0


def test_torch_flop_counter_alone_misses_the_fast_kernels_this_count_includes():
    from torch.utils.flop_counter import FlopCounterMode

    from sr_arch.archs.layers import lean_paths
    from sr_arch.utils.macs import network_macs

    golden = load_golden('grformer_tiny_x2')
    net = ARCH_REGISTRY.get('GRFormer')(**golden['kwargs']).eval()
    naive = FlopCounterMode(display=False)
    with torch.no_grad(), lean_paths(False), naive:
        net(golden['input'])
    ours = network_macs(net, (1, 3, 16, 16))
    # exactly the attention products, which the fused CPU kernel hides from torch's counter
    assert ours.total - naive.get_total_flops() / 2 == ours.per_op['aten.bmm'] > 0


def test_attention_kernels_without_a_torch_formula_are_counted_and_unknown_compute_ops_reported():
    from sr_arch.utils.macs import count_macs

    q, k, v = torch.rand(2, 3, 50, 16), torch.rand(2, 3, 40, 16), torch.rand(2, 3, 40, 8)
    for shapes in ((q, k, k), (q[0], k[0], k[0]), (q, k[:, :1], k[:, :1])):  # 4-D, 3-D, grouped-query heads
        a, b, c = shapes
        expected = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel() * 50 * 40 * 32
        assert count_macs(lambda: F.scaled_dot_product_attention(*shapes)).total == expected
    assert count_macs(lambda: F.scaled_dot_product_attention(q, k, v)).total == 2 * 3 * 50 * 40 * (16 + 8)
    bias, a, b = torch.rand(4), torch.rand(3, 5), torch.rand(5, 4)
    result = count_macs(lambda: torch._addmm_activation(bias, a, b))
    assert result.uncounted == ['aten._addmm_activation'] and result.total == 0


#: MACs (G) of torch's flop counter on the official networks, 64x64 LR, x4 (issue 17)
OFFICIAL_MACS = {('HAT', 'HAT-S'): 54.62, ('HAT', 'HAT'): 103.9, ('RGT', 'RGT-S'): 46.91,
                 ('GRFormer', 'GRFormer-light'): 6.15, ('ESRT', 'ESRT'): 5.36, ('LabNet', 'LabNet'): 49.89}


@pytest.mark.parametrize('family, variant', list(OFFICIAL_MACS))
def test_macs_of_the_published_variants_match_the_official_networks(family, variant):
    from sr_arch.archs import family_spec
    from sr_arch.utils.macs import network_macs

    with torch.device('meta'):
        net = family_spec(family).build(variant, 4).eval()
    macs = network_macs(net, (1, 3, 64, 64))
    official = OFFICIAL_MACS[(family, variant)]
    assert abs(macs.total / 1e9 - official) / official < 0.03, macs.total / 1e9
    assert macs.uncounted == []


def test_profile_prints_the_full_macs_of_esrt(capsys):
    from sr_arch import profile

    assert profile.main(['--arch', 'ESRT', '--scale', '4', '--size', '64x64', '--repeats', '1', '--warmup', '0',
                         '--format', 'json']) == 0
    row, = json.loads(capsys.readouterr().out)
    assert row['model'] == 'ESRT' and abs(row['macs'] / 1e9 - 5.36) < 0.01  # 4.16 before: SDPA was not counted


# ---------------------------------------------------------------------------------------------- pictures


def test_tiled_forward_reports_progress_per_batch_of_tiles():
    from sr_arch.utils.tiling import TileProgressBar, tiled_forward

    calls = []
    lq = torch.rand(1, 3, 40, 40)
    out = tiled_forward(lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2), lq, 2, 16, 4, batch_size=3,
                        progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (1, 3, 80, 80)
    assert calls == [(3, 9), (6, 9), (9, 9)]
    bar = TileProgressBar(open(os.devnull, 'w'))
    for done in (3, 6, 9):
        bar(done, 9)
    assert bar._bar is None  # closed at the last tile, ready for the next image


def test_detail_box_finds_the_region_bicubic_misses():
    from sr_arch.compare import detail_box

    hr = np.full((120, 160, 3), 128, np.uint8)
    hr[70:100, 20:50] = photo('astronaut', 30)  # the only detail
    lr = bicubic_downsample(np.ascontiguousarray(hr[..., ::-1]), 2)
    bicubic = bicubic_upscale(lr, 2)[..., ::-1]
    x, y, w, h = detail_box(hr, np.ascontiguousarray(bicubic), 24)
    assert (w, h) == (24, 24) and 20 - 8 <= x <= 50 - 16 and 70 - 8 <= y <= 100 - 16


def test_compare_figure_with_a_checkpoint_and_an_sr_folder(tmp_path, capsys):
    from sr_arch import compare

    hr = photo('chelsea')[100:196, 150:258][..., ::-1]  # BGR 96x108
    cv2.imwrite(str(tmp_path / 'cat.png'), hr)
    atomic_save({'params': ARCH_REGISTRY.get('ESRT')(upscale=2).state_dict()}, str(tmp_path / 'esrt_x2.pth'))
    lr = bicubic_downsample(np.ascontiguousarray(hr[..., ::-1]), 2)
    nearest = np.ascontiguousarray(lr.repeat(2, 0).repeat(2, 1)[..., ::-1])
    os.makedirs(tmp_path / 'nearest')
    cv2.imwrite(str(tmp_path / 'nearest' / 'cat_mytest.png'), nearest)  # test.py's <image>_<suffix>.png naming
    out = tmp_path / 'figure.png'
    code = compare.main([str(tmp_path / 'cat.png'), '--scale', '2', '--model', f'ESRT-x2={tmp_path / "esrt_x2.pth"}',
                         '--sr', str(tmp_path / 'nearest'), '--box', '10,20,32,24', '--out', str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    figure = cv2.imread(str(out))
    assert figure.shape[0] > 144 and figure.shape[1] > 4 * 192  # overview + one row of four 192x144 crops
    assert (figure[..., 2] > 200).sum() > 100  # the red zoom box
    rgb_hr = np.ascontiguousarray(hr[..., ::-1])
    expected = {'Bicubic': psnr_y(bicubic_upscale(lr, 2), rgb_hr, 2),
                'nearest': psnr_y(np.ascontiguousarray(nearest[..., ::-1]), rgb_hr, 2)}
    for label, psnr in expected.items():
        line = next(line for line in printed.splitlines() if line.startswith(label + ' '))
        assert abs(float(line.split()[1]) - psnr) < 0.006
    assert any(line.startswith('ESRT-x2 ') for line in printed.splitlines())

    def run(*args):
        return compare.main([str(tmp_path / 'cat.png'), '--scale', '2', '--out', str(tmp_path / 'x.png'), *args])

    assert run('--lr', str(tmp_path / 'cat.png')) == 2
    assert "--lr" in capsys.readouterr().err
    os.makedirs(tmp_path / 'empty')
    assert run('--sr', str(tmp_path / 'empty')) == 2
    assert f"--sr {tmp_path / 'empty'}: no image named cat.* or cat_*.* in this folder" in capsys.readouterr().err
    assert run('--sr', str(tmp_path)) == 2  # the folder of the HR image finds the HR itself
    assert f"--sr {tmp_path / 'cat.png'}: this is the HR image itself" in capsys.readouterr().err
    assert run('--box', '100,0,32,32') == 2 and 'does not fit in the HR image' in capsys.readouterr().err
    assert run('--model', str(tmp_path / 'esrt_x2.pth'), '--scale', '4') == 2
    assert 'the checkpoint is ESRT x2, it cannot upscale x4' in capsys.readouterr().err


def test_demo_side_by_side_images_are_captioned_with_their_scores():
    from sr_arch import demo

    images = [photo(name, 40)[..., ::-1].copy() for name in ('astronaut', 'coffee', 'chelsea')]
    score = demo.ImageScores('x', 27.5, 0.81, 29.25, 0.86)
    panel = demo.labelled_side_by_side(score, 'ESRT', *images)
    assert panel.shape[0] > 40 + 20 and panel.shape[1] >= 3 * 40 + 8
    columns = [c for c in range(panel.shape[1]) if np.array_equal(panel[:40, c], images[0][:, 0])]
    assert columns  # the bicubic image sits at the top of its panel, unchanged
    captions = panel[45:]
    assert (captions < 100).any()  # dark caption text under the images
