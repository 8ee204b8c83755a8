"""Real-world SR pipeline: Real-ESRGAN degradation on CPU, RealNet PSNR and GAN stages from our option files,
the offline VGG perceptual loss, NIQE on LR-only test sets, Real-HAT models and option files."""
from __future__ import annotations

import json
import math
import os
import time

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.models import build_model

from helpers import HELDOUT_PHOTOS, TRAIN_PHOTOS, deep_update, derive_options, load_options, photo, run_script
from sr_arch.losses.perceptual_loss import MissingVGGWeightsError, VGGPerceptualLoss
from sr_arch.utils.checkpoint import CheckpointError, load_checkpoint

PSNR_OPT = 'options/train/RealNet/train_RealNet_SRx4_psnr.yml'
GAN_OPT = 'options/train/RealNet/train_RealNet_GAN_SRx4_finetune_from_LabNet.yml'
NIQE_TEST_OPT = 'options/test/RealNet/test_RealNet_GAN_SRx4.yml'
REAL_HAT_MSE_OPT = 'options/train/HAT/train_Real_HAT_SRx4_mse_model.yml'
REAL_HAT_GAN_OPT = 'options/train/HAT/train_Real_HAT_GAN_SRx4_finetune_from_mse_model.yml'
REAL_HAT_TEST_OPT = 'options/test/HAT/test_HAT_GAN_Real_SRx4.yml'

TINY_LABNET = {'type': 'LabNet', 'nf': 16, 'upscale': 4, 'num_blocks': [1, 1, 1, 1, 1, 1], 'residual_antialias': True}
TINY_HAT = {'embed_dim': 24, 'depths': [2], 'num_heads': [2], 'window_size': 8, 'mlp_ratio': 2, 'img_size': 32,
            'squeeze_factor': 4}
TINY_DISCRIMINATOR = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True}


def write_photos(folder: str, names, size: tuple[int, int]) -> str:
    """Centre crops (h, w) of bundled photos as PNG; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    h, w = size
    for name in names:
        img = photo(name, max(h, w))[:h, :w]
        cv2.imwrite(os.path.join(folder, f'{name}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder


def make_real_train_set(root: str, names=TRAIN_PHOTOS[:4], size: int = 160) -> tuple[str, str]:
    """HR photos + a meta-info list (first token = file name), the layout RealESRGANDataset reads."""
    hr = write_photos(os.path.join(root, 'HR_sub'), names, (size, size))
    meta = os.path.join(root, 'meta_info.txt')
    with open(meta, 'w') as f:
        f.writelines(f'{name}.png ({size},{size},3)\n' for name in names)
    return hr, meta


def tiny_real_training(root: str, gt_size: int = 32, batch: int = 1, queue: int = 1) -> dict:
    """Overrides that make a real-world option file train in seconds on CPU."""
    hr, meta = make_real_train_set(os.path.join(root, 'data'))
    return {'num_gpu': 0, 'gt_size': gt_size, 'queue_size': queue,
            'datasets': {'train': {'dataroot_gt': hr, 'meta_info': meta, 'gt_size': gt_size,
                                   'num_worker_per_gpu': 0, 'batch_size_per_gpu': batch}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}


def runtime_options(opt: dict, root: str, is_train: bool) -> dict:
    """The keys basicsr's option parser adds, for building a model in this process."""
    opt = dict(opt, is_train=is_train, dist=False, rank=0, world_size=1, num_gpu=0, opt_path='test.yml')
    opt['path'] = dict(opt.get('path') or {}, pretrain_network_g=None, models=os.path.join(root, 'models'),
                       training_states=os.path.join(root, 'states'), visualization=os.path.join(root, 'vis'))
    for phase, dataset in opt.get('datasets', {}).items():
        dataset.update(phase=phase.split('_')[0], scale=opt['scale'])
    return opt


# ---------------------------------------------------------------------------------------------- degradation


def test_degradation_on_cpu_real_photos_gives_documented_sizes(tmp_path):
    opt = deep_update(load_options(REAL_HAT_MSE_OPT), tiny_real_training(str(tmp_path), gt_size=64, batch=2, queue=2))
    opt['network_g'].update(TINY_HAT)
    opt = runtime_options(opt, str(tmp_path), is_train=True)
    dataset = build_dataset(opt['datasets']['train'])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False)
    batch = next(iter(loader))
    assert batch['gt'].shape == (2, 3, 400, 400)  # RealESRGANDataset pads / crops every image to 400
    model = build_model(opt)
    assert type(model).__name__ == 'RealHATMSEModel' and model.device.type == 'cpu'
    assert model.pad_multiple == 8  # HAT's window: padding comes from InferenceMixin via HATModel

    for step in range(2):  # fill the 2-pair queue, then draw from it
        model.feed_data(batch)
        assert model.lq.shape == (2, 3, 16, 16) and model.gt.shape == (2, 3, 64, 64)
        assert model.lq.device.type == 'cpu' and model.queue_lr.device.type == 'cpu'
        levels = model.lq * 255
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8-bit quantised LR
        assert 0 <= model.lq.min() and model.lq.max() <= 1
    assert model.queue_ptr == 2
    # the LR is degraded, not a plain downscale of the GT
    plain = torch.nn.functional.interpolate(model.gt, scale_factor=0.25, mode='area')
    assert (model.lq - plain).abs().mean() > 2 / 255
    model.optimize_parameters(1)
    assert math.isfinite(model.get_current_log()['l_pix'])

    # validation batches (no kernels) are used as they are, even in training mode
    lq = torch.rand(1, 3, 12, 20)
    model.feed_data({'lq': lq, 'gt': torch.rand(1, 3, 48, 80)})
    assert torch.equal(model.lq, lq) and model.gt.shape == (1, 3, 48, 80)
    model.feed_data({'lq': lq})  # LR-only: the previous GT must not be scored against
    assert not hasattr(model, 'gt')
    model.test()
    assert model.output.shape == (1, 3, 48, 80) and model.net_g.training


def test_degradation_option_errors_name_the_key(tmp_path):
    opt = deep_update(load_options(PSNR_OPT), tiny_real_training(str(tmp_path), batch=2, queue=5))
    opt['network_g'] = dict(TINY_LABNET)
    with pytest.raises(ValueError, match=r'test.yml: queue_size 5 must be a multiple of .*batch_size_per_gpu 2'):
        build_model(runtime_options(opt, str(tmp_path), is_train=True))
    del opt['jpeg_range2']
    opt['queue_size'] = 4
    with pytest.raises(ValueError, match=r"test.yml: missing top-level option 'jpeg_range2'"):
        build_model(runtime_options(opt, str(tmp_path), is_train=True))


# ---------------------------------------------------------------------------------------------- RealNet stages


@pytest.fixture(scope='module')
def psnr_stage(tmp_path_factory):
    """RealNet PSNR stage from our option file: 2 iterations of a tiny LabNet on CPU, validated on a real pair."""
    root = str(tmp_path_factory.mktemp('realnet_psnr'))
    val_hr = write_photos(os.path.join(root, 'val', 'HR'), HELDOUT_PHOTOS[1:2], (256, 256))
    val_lr = os.path.join(root, 'val', 'LR')
    os.makedirs(val_lr)
    for name in os.listdir(val_hr):
        img = cv2.imread(os.path.join(val_hr, name))
        cv2.imwrite(os.path.join(val_lr, name), cv2.resize(img, (64, 64), interpolation=cv2.INTER_CUBIC))
    overrides = deep_update(tiny_real_training(root), {
        'network_g': TINY_LABNET, 'train': {'total_iter': 2},
        'datasets': {'val': {'dataroot_gt': val_hr, 'dataroot_lq': val_lr}},
        'val': {'val_freq': 2, 'save_img': False}})
    derive_options(PSNR_OPT, overrides, os.path.join(root, 'psnr.yml'))
    start = time.perf_counter()
    proc = run_script('train.py', ['-opt', 'psnr.yml'], cwd=root)
    return root, proc, time.perf_counter() - start


def test_realnet_psnr_stage_trains_on_cpu_from_our_option_file(psnr_stage):
    root, proc, _ = psnr_stage
    models = os.path.join(root, 'experiments', 'train_RealNet_SRx4_psnr', 'models')
    checkpoint = load_checkpoint(os.path.join(models, 'net_g_2.pth'))
    assert set(checkpoint) == {'params', 'params_ema', 'network_kwargs'}  # EMA 0.999
    assert checkpoint['network_kwargs'] == {'residual_antialias': True}  # the bicubic residual mode it trained with
    log = proc.stdout + proc.stderr
    assert 'l_pix' in log
    # validation on a paired set reports PSNR, SSIM and NIQE (NIQE of a real photo's SR is a finite number)
    niqe = [line for line in log.splitlines() if '# niqe:' in line]
    assert niqe and math.isfinite(float(niqe[-1].split('# niqe:')[1].split()[0]))


def test_realnet_gan_stage_runs_end_to_end_and_saves_g_and_d(psnr_stage, tmp_path):
    psnr_root, _, _ = psnr_stage
    init = os.path.join(psnr_root, 'experiments', 'train_RealNet_SRx4_psnr', 'models', 'net_g_latest.pth')
    overrides = deep_update(tiny_real_training(str(tmp_path)), {
        'network_g': TINY_LABNET, 'network_d': TINY_DISCRIMINATOR, 'train': {'total_iter': 2},
        'path': {'pretrain_network_g': init, 'strict_load_g': True}})
    overrides['val'] = overrides['datasets']['val'] = None  # no validation set (None deletes the key)

    overrides['train']['perceptual_opt'] = {'pretrained': False}  # untrained VGG: the pipeline, not the loss
    derive_options(GAN_OPT, overrides, str(tmp_path / 'gan.yml'))
    proc = run_script('train.py', ['-opt', 'gan.yml'], cwd=str(tmp_path), env={'TORCH_HOME': str(tmp_path)})
    log = proc.stdout + proc.stderr
    for term in ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake'):
        assert term in log
    models = tmp_path / 'experiments' / 'train_RealNet_GAN_SRx4_finetune_from_LabNet' / 'models'
    generator = load_checkpoint(str(models / 'net_g_2.pth'))
    discriminator = load_checkpoint(str(models / 'net_d_2.pth'))['params']
    assert (tmp_path / 'experiments' / 'train_RealNet_GAN_SRx4_finetune_from_LabNet' / 'training_states'
            / '2.state').exists()
    from basicsr.archs.discriminator_arch import UNetDiscriminatorSN
    UNetDiscriminatorSN(3, 8, skip_connection=True).load_state_dict(discriminator, strict=True)
    start_weights = load_checkpoint(init)['params_ema']
    assert generator['params'].keys() == start_weights.keys()  # strict load of the PSNR stage's weights
    assert any(not torch.equal(generator['params'][k], start_weights[k]) for k in start_weights)


# ---------------------------------------------------------------------------------------------- perceptual loss


def test_missing_vgg_weights_error_names_the_paths(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(MissingVGGWeightsError) as info:
        VGGPerceptualLoss({'conv5_4': 1.0})
    assert time.perf_counter() - start < 10  # no download attempt
    message = str(info.value)
    assert os.path.join(str(tmp_path), 'torch_home', 'hub', 'checkpoints', 'vgg19-dcbb9e9d.pth') in message
    assert os.path.join('experiments', 'pretrained_models', 'vgg19-dcbb9e9d.pth') in message
    assert 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth' in message
    with pytest.raises(MissingVGGWeightsError, match='perceptual_opt.weights_path nowhere.pth: no such file'):
        VGGPerceptualLoss({'conv5_4': 1.0}, weights_path='nowhere.pth')


def test_vgg_weights_are_read_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    first_block = {'features.0.weight': torch.randn(64, 3, 3, 3), 'features.0.bias': torch.randn(64),
                   'features.2.weight': torch.randn(64, 64, 3, 3), 'features.2.bias': torch.randn(64)}
    torch.save(first_block, cache / 'vgg19-dcbb9e9d.pth')
    loss = VGGPerceptualLoss({'conv1_2': 1.0})
    assert loss.weights_source == str(cache / 'vgg19-dcbb9e9d.pth')
    assert torch.equal(loss.vgg.vgg_net.conv1_2.weight, first_block['features.2.weight'])
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(1, 3, 24, 24)
    percep, style = loss(x, x.flip(-1))
    assert percep > 0 and style is None
    with pytest.raises(CheckpointError, match='not vgg19 weights, missing features.5'):
        VGGPerceptualLoss({'conv2_1': 1.0})  # the file stops at conv1_2


# ---------------------------------------------------------------------------------------------- testing


def test_niqe_test_option_file_scores_an_lr_only_folder(tmp_path):
    from basicsr.metrics import calculate_niqe

    from sr_arch.archs.labnet_arch import LabNet

    lr_dir = write_photos(str(tmp_path / 'RealWorld38' / 'LR'), ('coffee', 'chelsea'), (64, 60))
    net = LabNet(**{k: v for k, v in TINY_LABNET.items() if k != 'type'})
    torch.save({'params_ema': net.state_dict()}, tmp_path / 'realnet_gan.pth')
    derive_options(NIQE_TEST_OPT, {'num_gpu': 0, 'network_g': TINY_LABNET,
                                   'path': {'pretrain_network_g': str(tmp_path / 'realnet_gan.pth')},
                                   'datasets': {'test_1': {'dataroot_lq': lr_dir}}}, str(tmp_path / 'test.yml'))
    run_script('test.py', ['-opt', 'test.yml'], cwd=str(tmp_path))
    results = tmp_path / 'results' / 'test_RealNet_GAN_SRx4'
    summary = json.loads((results / 'summary.json').read_text())
    per_image = json.loads((results / 'per_image.json').read_text())['RealWorld38']
    assert set(per_image) == {'coffee', 'chelsea'} and math.isfinite(summary['RealWorld38']['niqe'])
    for name, record in per_image.items():  # each NIQE is the one of the saved SR image
        sr = cv2.imread(str(results / 'visualization' / 'RealWorld38' / f'{name}_test_RealNet_GAN_SRx4.png'))
        assert sr.shape == (256, 240, 3)
        assert record['niqe'] == pytest.approx(float(calculate_niqe(sr, crop_border=4)), abs=1e-6)
    assert summary['RealWorld38']['niqe'] == pytest.approx(np.mean([r['niqe'] for r in per_image.values()]))


class OneImage(torch.utils.data.Dataset):
    """An LR-only dataset of one (3, H, W) image, shaped like basicsr's SingleImageDataset items."""

    def __init__(self, lq: torch.Tensor, name: str) -> None:
        self.lq, self.opt = lq, {'name': name}

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        return {'lq': self.lq, 'lq_path': 'astronaut.png'}


def test_real_hat_test_model_pads_to_the_window_and_scores_niqe(tmp_path):
    opt = load_options(REAL_HAT_TEST_OPT)
    opt['network_g'].update(TINY_HAT)
    opt = runtime_options(opt, str(tmp_path), is_train=False)
    model = build_model(opt)
    assert type(model).__name__ == 'RealHATGANModel' and model.pad_multiple == 8
    lr = torch.from_numpy(photo('astronaut', 60)[:54]).permute(2, 0, 1).float().div(255)[None]
    loader = torch.utils.data.DataLoader(OneImage(lr[0], 'photos'), batch_size=1)
    model.validation(loader, 'test', None, save_img=False)
    record = model.validation_results['photos'].images[0]
    assert set(record.metrics) == {'niqe'} and math.isfinite(record.metrics['niqe'])
    assert model.metric_results['niqe'] == record.metrics['niqe']


def test_real_hat_option_files_use_the_key_the_dataset_reads():
    for path, model_type in ((REAL_HAT_MSE_OPT, 'RealHATMSEModel'), (REAL_HAT_GAN_OPT, 'RealHATGANModel')):
        opt = load_options(path)
        train_set = opt['datasets']['train']
        assert opt['model_type'] == model_type and 'meta_info' in train_set and 'meta_info_file' not in train_set
        assert opt['network_g']['window_size'] == 16 and opt['train']['ema_decay'] == 0.999
    gan = load_options(REAL_HAT_GAN_OPT)
    assert gan['train']['optim_g']['lr'] == gan['train']['optim_d']['lr'] == 1e-4
    assert gan['train']['total_iter'] == 400000 and gan['train']['perceptual_opt']['type'] == 'VGGPerceptualLoss'
    realnet_gan, realnet_psnr = load_options(GAN_OPT), load_options(PSNR_OPT)
    assert realnet_psnr['train']['optim_g']['lr'] == 4e-4 and realnet_psnr['train']['total_iter'] == 300000
    assert realnet_gan['train']['optim_g']['lr'] == realnet_gan['train']['optim_d']['lr'] == 5e-5
    assert realnet_gan['train']['total_iter'] == 900000 and realnet_gan['path']['strict_load_g'] is True


def test_real_hat_gan_option_file_runs_a_gan_step(tmp_path):
    opt = deep_update(load_options(REAL_HAT_GAN_OPT), tiny_real_training(str(tmp_path), gt_size=32, batch=1, queue=1))
    opt['network_g'].update(TINY_HAT)
    opt['network_d'] = TINY_DISCRIMINATOR
    opt['train']['perceptual_opt'].update(pretrained=False, layer_weights={'conv1_2': 0.1, 'conv2_2': 0.1})
    opt = runtime_options(opt, str(tmp_path), is_train=True)
    batch = next(iter(torch.utils.data.DataLoader(build_dataset(opt['datasets']['train']), batch_size=1)))
    model = build_model(opt)
    assert type(model).__name__ == 'RealHATGANModel'
    d_before = {k: v.clone() for k, v in model.net_d.state_dict().items()}
    g_before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(batch)
    assert model.lq.shape == (1, 3, 8, 8) and model.gt_usm.shape == (1, 3, 32, 32)
    model.optimize_parameters(1)
    log = model.get_current_log()
    assert {'l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake', 'out_d_real', 'out_d_fake'} <= set(log)
    assert all(math.isfinite(v) for v in log.values())
    assert any(not torch.equal(v, d_before[k]) for k, v in model.net_d.state_dict().items())
    assert any(not torch.equal(v, g_before[k]) for k, v in model.net_g.state_dict().items())
    assert all(p.requires_grad for p in model.net_d.parameters())
