"""LabNet family specifics (synthetic blind SR): the official class name, padding, the bicubic residual, the
blind-SR dataset, Gaussian8, option files (the rules every family keeps are in test_arch_contract.py)."""
from __future__ import annotations

import json
import os
import time
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY

from helpers import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    bicubic_upscale,
    derive_options,
    golden_cases,
    load_golden,
    load_options,
    photo,
    psnr_y,
    run_script,
)
from sr_arch import infer, prepare
from sr_arch.archs.labnet_arch import FAMILY, LABNET_SCALES, OFFICIAL_NUM_BLOCKS, LabNet
from sr_arch.archs.spec import NETWORK_KWARGS_KEY
from sr_arch.data import gaussian8
from sr_arch.data.blind_sr_dataset import BlindSRDataset
from sr_arch.data.degradations import blur, gaussian_kernel
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

TINY = dict(nf=16, num_blocks=(1, 1, 1, 1, 1, 1))


def tiny_labnet(scale: int, **kwargs) -> LabNet:
    return LabNet(upscale=scale, **TINY, **kwargs).eval()


def write_photos(folder: str, names, size: int | None = None, crop: tuple[int, int] | None = None) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        img = photo(name, size)
        if crop is not None:
            img = img[:crop[0], :crop[1]]
        cv2.imwrite(os.path.join(folder, f'{name}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def high_frequency_energy(img: torch.Tensor) -> float:
    """Mean absolute Laplacian of a (C, H, W) image."""
    lap = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).expand(img.shape[0], 1, 3, 3)
    return F.conv2d(img[None], lap, groups=img.shape[0]).abs().mean().item()


# ----------------------------------------------------------------------------------------------------------
# network

@pytest.mark.parametrize('case', golden_cases('LabNet'))
def test_the_official_class_name_is_the_same_network(case):
    golden = load_golden(case)
    outputs = []
    for name in ('LabNet', 'LabNet_STEA'):
        net = ARCH_REGISTRY.get(name)(**golden['kwargs']).eval()
        net.load_state_dict(golden['state_dict'], strict=True)
        with torch.no_grad():
            outputs.append(net(golden['input']))
    assert torch.equal(*outputs)
    assert FAMILY.aliases == ('LabNet_STEA',)


@pytest.mark.parametrize('scale', (2, 3, 4))
def test_any_input_size_gives_scale_times_size(scale):
    net = tiny_labnet(scale)
    with torch.no_grad():
        for h, w in [(13, 7), (5, 18), (1, 1)]:
            out = net(torch.rand(2, 3, h, w))
            assert out.shape == (2, 3, scale * h, scale * w)
            assert torch.isfinite(out).all()
        # the official forward (Restorer) cannot take these sizes: the padding is what makes them work
        with pytest.raises(RuntimeError):
            net.Restorer(torch.rand(1, 3, 13, 7))
        # multiples of 4 take the official path unchanged
        x = torch.rand(1, 3, 12, 8)
        assert torch.equal(net(x), net.Restorer(x))


def test_padding_is_cropped_from_the_right_side():
    """Padding goes bottom/right and is cropped there: the output stays aligned with the unpadded image."""
    net = tiny_labnet(2)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        odd = net(x[..., :30, :29])
    assert odd.shape == (1, 3, 60, 58)
    # not exactly equal: the channel gates average over the whole (padded) map
    aligned = (odd[..., :8, :8] - full[..., :8, :8]).abs().max()
    shifted = (odd[..., 1:9, 1:9] - full[..., :8, :8]).abs().max()
    assert aligned < 2e-3 < shifted, (aligned, shifted)


def test_residual_antialias_switches_only_the_bicubic_kernel():
    x = torch.rand(1, 3, 8, 12)
    net_aa = tiny_labnet(3)
    net_plain = tiny_labnet(3, residual_antialias=False)
    net_plain.load_state_dict(net_aa.state_dict())
    with torch.no_grad():
        delta = net_plain(x) - net_aa(x)
    size = (24, 36)
    expected = (F.interpolate(x, size, mode='bicubic', align_corners=False).clamp(0, 1)
                - F.interpolate(x, size, mode='bicubic', align_corners=False, antialias=True).clamp(0, 1))
    assert expected.abs().max() > 1e-2  # the two kernels really differ
    assert torch.allclose(delta, expected, atol=1e-6)


def test_official_arguments_and_bad_configs():
    with pytest.warns(UserWarning, match=r"input_para.*kernel_size.*loop.*nb.*pca_matrix_path"):
        net = ARCH_REGISTRY.get('LabNet_STEA')(nf=16, nb=40, upscale=2, input_para=10, kernel_size=21, loop=0,
                                                 pca_matrix_path=None, num_blocks=(1, 0, 0, 0, 0, 0))
    assert net.scale == 2
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        LabNet(nf=16, upscale=2, num_blocks=(0,) * 6)  # no leftovers, no warning
    with pytest.raises(TypeError, match='nfeat'):
        LabNet(nfeat=16)
    with pytest.raises(ValueError, match='nf=8'):
        LabNet(nf=8)
    with pytest.raises(ValueError, match='upscale=0'):
        LabNet(nf=16, upscale=0)
    with pytest.raises(ValueError, match=r'num_blocks=\(1, 2\)'):
        LabNet(nf=16, num_blocks=(1, 2))
    assert FAMILY.variants['LabNet']['num_blocks'] == OFFICIAL_NUM_BLOCKS and sum(OFFICIAL_NUM_BLOCKS) == 46


# ----------------------------------------------------------------------------------------------------------
# degradation and dataset

def test_kernel_and_blur_match_independent_references():
    for sigma in (0.2, 1.3, 4.0):
        reference = cv2.getGaussianKernel(21, sigma, cv2.CV_64F)
        assert np.allclose(gaussian_kernel(21, sigma), reference @ reference.T, atol=1e-12)
    anisotropic = gaussian_kernel(21, 1.0, 3.0, 0.0)
    assert np.isclose(anisotropic.sum(), 1.0)
    assert anisotropic[:, 10].std() > anisotropic[10, :].std()  # wider along y (rows)
    assert np.allclose(gaussian_kernel(21, 1.0, 3.0, np.pi / 2), anisotropic.T, atol=1e-12)
    img = torch.from_numpy(photo('astronaut', 40).astype(np.float32) / 255).permute(2, 0, 1)
    kernel = gaussian_kernel(21, 2.0)
    reference = cv2.filter2D(img.permute(1, 2, 0).numpy(), -1, kernel.astype(np.float32),
                             borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(blur(img, kernel).permute(1, 2, 0).numpy() - reference).max() < 1e-5
    with pytest.raises(ValueError, match='odd'):
        gaussian_kernel(20, 1.0)


def make_dataset(folder: str, **opt) -> BlindSRDataset:
    base = dict(dataroot_gt=folder, io_backend=dict(type='disk'), scale=4, gt_size=64, phase='train')
    base.update(opt)
    return DATASET_REGISTRY.get('BlindSRDataset')(base)


def seeded_item(dataset: BlindSRDataset, index: int, seed: int) -> dict:
    """Load one item with the global generators seeded by ``seed``, as the training loader does per sample."""
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        return dataset[index]


def test_dataset_is_deterministic_under_a_seed(tmp_path):
    folder = str(tmp_path / 'hr')
    write_photos(folder, ('astronaut', 'coffee'), size=160)
    dataset, again, other_seed = make_dataset(folder), make_dataset(folder), make_dataset(folder, seed=1)
    a, b, c = seeded_item(dataset, 0, 5), seeded_item(again, 0, 5), seeded_item(other_seed, 0, 5)
    assert a['lq'].shape == (3, 16, 16) and a['gt'].shape == (3, 64, 64)
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']) and a['sigma'] == b['sigma']
    assert not torch.equal(a['lq'], c['lq'])
    assert not torch.equal(a['lq'], seeded_item(dataset, 0, 6)['lq'])  # another sample seed: another sample
    assert 0.2 <= a['sigma'] <= 4.0
    assert torch.equal(a['lq'], (a['lq'] * 255).round() / 255)  # 8-bit quantised


def test_training_loader_replays_epochs_and_never_repeats_a_sample(tmp_path):
    from sr_arch.utils.sampling import ResumableSampler, SeededDataset

    folder = str(tmp_path / 'hr')
    write_photos(folder, ('astronaut', 'coffee'), size=160)
    dataset = make_dataset(folder, gt_size=32)

    def epoch(number: int, workers: int) -> list[dict]:
        sampler = ResumableSampler(len(dataset), ratio=2, seed=0)  # every image twice per epoch
        sampler.set_epoch(number)
        loader = torch.utils.data.DataLoader(SeededDataset(dataset), batch_size=1, sampler=sampler,
                                             num_workers=workers)
        return sorted(loader, key=lambda batch: (batch['gt_path'][0], batch['sigma'].item()))

    first, first_with_workers, second = epoch(0, 0), epoch(0, 2), epoch(1, 0)
    assert all(torch.equal(x['lq'], y['lq']) for x, y in zip(first, first_with_workers))  # worker count is irrelevant
    sigmas = [batch['sigma'].item() for batch in first + second]
    assert len(set(sigmas)) == len(sigmas) == 8  # no repeat within an epoch (enlarge ratio) or across epochs


def test_dataset_eval_phase_lr_size_widths_and_blur_strength(tmp_path):
    folder = str(tmp_path / 'hr')
    write_photos(folder, ('chelsea',), crop=(150, 203))
    sigmas = [0.4, 0.8, 1.2, 1.6, 2.0, 3.0, 4.0]
    dataset = make_dataset(folder, phase='val', scale=3, sigmas=sigmas)
    assert len(dataset) == len(sigmas)
    items = [dataset[i] for i in range(len(sigmas))]
    for item, sigma in zip(items, sigmas):
        assert item['gt'].shape == (3, 150, 201)  # mod-crop to x3
        assert item['lq'].shape == (3, 50, 67)
        assert item['sigma'] == sigma and item['lq_path'].endswith(f'chelsea_sig{sigma:.2f}.png')
    energy = [high_frequency_energy(item['lq']) for item in items]
    assert all(a > b for a, b in zip(energy, energy[1:])), energy
    assert torch.equal(dataset[2]['lq'], items[2]['lq'])  # evaluation items never change
    assert len(make_dataset(folder, phase='val', scale=3, sigmas='gaussian8')) == 8


def test_dataset_reads_lmdb_like_the_folder_and_draws_anisotropic_kernels(tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    folder = str(tmp_path / 'hr')
    write_photos(folder, ('astronaut', 'coffee'), size=96)
    make_lmdb_from_imgs(folder, str(tmp_path / 'hr.lmdb'), ['astronaut.png', 'coffee.png'], ['astronaut', 'coffee'])
    from_lmdb = make_dataset(str(tmp_path / 'hr.lmdb'), io_backend={'type': 'lmdb'}, aniso_prob=1.0)
    from_folder = make_dataset(folder, aniso_prob=1.0)
    a, b = seeded_item(from_lmdb, 1, 3), seeded_item(from_folder, 1, 3)
    assert a['gt_path'] == 'coffee' and torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])
    sigma_x, sigma_y, angle = a['kernel_params'].tolist()
    assert sigma_x != sigma_y and angle != 0.0 and a['sigma'] == pytest.approx(sigma_x)
    with pytest.raises(FileNotFoundError, match='no meta_info.txt'):
        make_dataset(str(tmp_path / 'missing.lmdb'), io_backend={'type': 'lmdb'})


def test_dataset_noise_and_bad_options(tmp_path):
    folder = str(tmp_path / 'hr')
    write_photos(folder, ('rocket',), size=96)
    clean = make_dataset(folder, phase='val', sigmas=[1.0])[0]['lq']
    noisy_item = make_dataset(folder, phase='val', sigmas=[1.0], noise_range=[10, 10])[0]
    assert noisy_item['noise_level'] == 10.0
    assert 5 / 255 < (noisy_item['lq'] - clean).std() < 15 / 255
    with pytest.raises(ValueError, match='gt_size'):
        make_dataset(folder, gt_size=63)
    with pytest.raises(ValueError, match='blur_sigma'):
        make_dataset(folder, blur_sigma=[2.0, 1.0])
    with pytest.raises(ValueError, match='blur_sigma'):
        make_dataset(folder, scale=8)
    with pytest.raises(ValueError, match='sigmas'):
        make_dataset(folder, sigmas=[1.0])
    with pytest.raises(FileNotFoundError, match='nowhere'):
        make_dataset(str(tmp_path / 'nowhere'))
    with pytest.raises(ValueError, match=r'rocket\.png \(96x96\) is smaller than gt_size 128'):
        make_dataset(folder, gt_size=128)[0]


# ----------------------------------------------------------------------------------------------------------
# Gaussian8

def test_average_over_widths():
    results = {f'Set5_sig{s:.2f}': {'psnr': 30.0 + i, 'ssim': 0.8} for i, s in enumerate(gaussian8.gaussian8_sigmas(4))}
    results.update({f'Set14_sig{s:.2f}': {'psnr': 28.0, 'ssim': 0.7} for s in gaussian8.gaussian8_sigmas(4)})
    results['DIV2KRK'] = {'psnr': 27.1}
    averages = gaussian8.average_over_widths(results)
    assert list(averages) == ['Set5', 'Set14', 'DIV2KRK']
    assert averages['Set5'] == pytest.approx({'psnr': 33.5, 'ssim': 0.8})
    assert averages['Set14'] == pytest.approx({'psnr': 28.0, 'ssim': 0.7})
    assert averages['DIV2KRK'] == {'psnr': 27.1}
    del results['Set14_sig2.00']
    with pytest.raises(ValueError, match='Set14 has 7 kernel widths'):
        gaussian8.average_over_widths(results)
    assert gaussian8.average_over_widths(results, require_widths=None)['Set14']['psnr'] == pytest.approx(28.0)
    results['Set14_sig2.00'] = {'psnr': 28.0}
    with pytest.raises(ValueError, match='Set14_sig2.00 has metrics'):
        gaussian8.average_over_widths(results)


# ----------------------------------------------------------------------------------------------------------
# option files

@pytest.mark.parametrize('scale', LABNET_SCALES)
def test_option_files_follow_the_official_recipe(scale):
    train = load_options(f'options/train/LabNet/train_LabNet_SRx{scale}.yml')
    data = train['datasets']['train']
    assert (train['model_type'], train['scale'], train['pad_multiple']) == ('SRArchModel', scale, 4)
    assert (data['type'], data['gt_size'] // scale, data['batch_size_per_gpu']) == ('BlindSRDataset', 64, 20)
    assert data['blur_sigma'] == ([0.2, 2.0] if scale == 2 else [0.2, 4.0]) and data['blur_kernel_size'] == 21
    assert data['dataroot_gt'].endswith('.lmdb') and data['io_backend']['type'] == 'lmdb'
    opt = train['train']
    assert (opt['optim_g']['lr'], opt['optim_g']['betas'], opt['total_iter']) == (4e-4, [0.9, 0.99], 1200000)
    assert (opt['scheduler']['milestones'], opt['scheduler']['gamma']) == ([300000, 600000, 900000], 0.5)
    assert opt['pixel_opt']['type'] == 'L1Loss'
    assert train['network_g'] == {'type': 'LabNet', 'nf': 64, 'upscale': scale, 'residual_antialias': True}

    test = load_options(f'options/test/LabNet/test_LabNet_SRx{scale}_Gaussian8.yml')
    names = [d['name'] for d in test['datasets'].values()]
    expected = [gaussian8.dataset_name(s, w)
                for s in gaussian8.BENCHMARK_SETS for w in gaussian8.gaussian8_sigmas(scale)]
    assert names == expected
    for d in test['datasets'].values():
        set_name, tag = d['name'].rsplit('_', 1)
        assert d['dataroot_lq'] == f'datasets/benchmark_gaussian8/{set_name}/X{scale}/{tag}'
        assert d['dataroot_gt'] == f'datasets/benchmark_gaussian8/{set_name}/X{scale}/HR'
    assert list(gaussian8.average_over_widths({n: {'psnr': 1.0} for n in names})) == list(gaussian8.BENCHMARK_SETS)
    assert all(m['crop_border'] == scale for m in test['val']['metrics'].values())


# ----------------------------------------------------------------------------------------------------------
# training

@pytest.mark.slow
def test_tiny_labnet_trains_and_tests_with_our_option_files_and_beats_bicubic_on_gaussian8(tmp_path):
    """train.py on blurred photos (train option file) -> Gaussian8 set of held-out photos made by our generator
    -> test.py (Gaussian8 test option file, checkpoint in the official plain-state_dict layout)."""
    scale, iters = 2, 120  # 200 iterations gave +0.76 dB over bicubic; 120 still beat it
    train_hr, heldout_hr = tmp_path / 'train_hr', tmp_path / 'datasets' / 'benchmark' / 'Set5' / 'HR'
    write_photos(str(train_hr), TRAIN_PHOTOS, crop=(256, 256))
    write_photos(str(heldout_hr), HELDOUT_PHOTOS, size=128)  # stands in for Set5
    network = dict(type='LabNet', nf=TINY['nf'], num_blocks=list(TINY['num_blocks']), upscale=scale,
                   residual_antialias=True)
    derive_options(f'options/train/LabNet/train_LabNet_SRx{scale}.yml', {
        'name': 'tiny_labnet', 'num_gpu': 0, 'network_g': network,
        'datasets': {
            'train': dict(dataroot_gt=str(train_hr), io_backend={'type': 'disk'}, gt_size=16 * scale,
                          batch_size_per_gpu=8, num_worker_per_gpu=0, dataset_enlarge_ratio=100),
            'val': dict(dataroot_gt=str(heldout_hr))},  # the file's on-the-fly Gaussian8 validation
        'train': {'optim_g': {'lr': 2e-3}, 'scheduler': {'milestones': [iters]}, 'total_iter': iters},
        'val': {'val_freq': iters},
        'logger': {'print_freq': 50, 'save_checkpoint_freq': iters, 'use_tb_logger': False},
    }, str(tmp_path / 'train.yml'))
    start = time.time()
    run_script('train.py', ['-opt', str(tmp_path / 'train.yml')], cwd=str(tmp_path))
    print(f'training {iters} iterations took {time.time() - start:.1f} s')
    train_log = ''.join(p.read_text() for p in (tmp_path / 'experiments' / 'tiny_labnet').glob('train_*.log'))
    assert 'Set5_gaussian8' in train_log and 'psnr' in train_log

    # our checkpoints store the residual mode (shapes cannot tell it), so `sr-arch infer` rebuilds the same network
    ours = str(tmp_path / 'experiments/tiny_labnet/models/net_g_latest.pth')
    assert load_checkpoint(ours)[NETWORK_KWARGS_KEY] == {'residual_antialias': True}
    assert infer.load_model(ours).net.residual_antialias is True

    # released-checkpoint layout: a plain state_dict where the test option file expects LabNetx{s}.pth
    weights = extract_state_dict(load_checkpoint(ours))
    released = tmp_path / 'experiments' / 'pretrained_models' / 'LabNet' / f'LabNetx{scale}.pth'
    released.parent.mkdir(parents=True)
    torch.save(dict(weights), released)
    assert prepare.main(['gaussian8', '--input', str(tmp_path / 'datasets' / 'benchmark'), '--sets', 'Set5',
                         '--scales', str(scale), '--output', str(tmp_path / 'datasets' / 'benchmark_gaussian8')]) == 0
    test_yml = load_options(f'options/test/LabNet/test_LabNet_SRx{scale}_Gaussian8.yml')
    other_sets = {key: None for key, d in test_yml['datasets'].items() if not d['name'].startswith('Set5_')}
    derive_options(f'options/test/LabNet/test_LabNet_SRx{scale}_Gaussian8.yml', {
        'num_gpu': 0, 'datasets': other_sets, 'network_g': network,
    }, str(tmp_path / 'test.yml'))
    run_script('test.py', ['-opt', str(tmp_path / 'test.yml')], cwd=str(tmp_path))

    results_dir = tmp_path / 'results' / test_yml['name']
    per_width = json.loads((results_dir / 'summary.json').read_text())
    by_set = json.loads((results_dir / 'summary_by_set.json').read_text())
    assert list(per_width) == [gaussian8.dataset_name('Set5', s) for s in gaussian8.gaussian8_sigmas(scale)]
    assert by_set['Set5']['psnr'] == pytest.approx(np.mean([r['psnr'] for r in per_width.values()]))
    bicubic = {}
    root = tmp_path / 'datasets' / 'benchmark_gaussian8' / 'Set5' / f'X{scale}'
    for name in per_width:
        scores = []
        for photo_name in HELDOUT_PHOTOS:
            hr = cv2.cvtColor(cv2.imread(str(root / 'HR' / f'{photo_name}.png')), cv2.COLOR_BGR2RGB)
            lr = cv2.cvtColor(cv2.imread(str(root / name.split('_')[-1] / f'{photo_name}.png')), cv2.COLOR_BGR2RGB)
            scores.append(psnr_y(bicubic_upscale(lr, scale), hr, crop_border=scale))
        bicubic[name] = float(np.mean(scores))
    bicubic_mean = float(np.mean(list(bicubic.values())))
    print(f'held-out Gaussian8 x{scale} ({len(HELDOUT_PHOTOS)} photos x 8 widths, test.py), mean PSNR-Y: '
          f'LabNet-tiny {by_set["Set5"]["psnr"]:.2f} dB, bicubic of the blurred LR {bicubic_mean:.2f} dB; per width: '
          + ', '.join(f'{n[-7:]} {per_width[n]["psnr"]:.2f}/{bicubic[n]:.2f}' for n in per_width))
    assert by_set['Set5']['psnr'] > bicubic_mean + 0.3
    assert all(per_width[n]['psnr'] > bicubic[n] for n in per_width)
