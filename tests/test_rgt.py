"""RGT family specifics: RG-SA's recursion and padding, official use_chop, x2->x3/x4 init, option files, training
(the rules every family keeps are in test_arch_contract.py)."""
from __future__ import annotations

import logging
import re
import resource
import time

import numpy as np
import pytest
import torch
from basicsr.models import build_model

from helpers import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    derive_options,
    heldout_psnrs,
    load_options,
    make_paired_folder,
    photo,
    pooled_psnr,
    run_script,
)
from sr_arch.archs.rgt_arch import FAMILY, RGT, min_padded_size, recursion_steps
from sr_arch.utils.checkpoint import atomic_save, extract_state_dict, load_checkpoint
from sr_arch.utils.option_validation import validate_options

#: a narrow RGT with both attentions, a shifted L-SA block (group 1, block 0) and the official layout
TINY = dict(embed_dim=24, depth=[2, 2], num_heads=[2, 2], mlp_ratio=2, split_size=[4, 8], img_size=64)
#: training test: iterations and learning rate (the recipe otherwise: our x2 option file)
TRAIN_ITERS, TRAIN_LR = 700, 1e-3


def rgt_model(network: dict, scale: int, path: dict | None = None, **extra):
    """An RGTModel in test mode on the CPU (basicsr's build_model, as test.py builds it)."""
    opt = dict(model_type='RGTModel', name='rgt_test', scale=scale, num_gpu=0, is_train=False, dist=False,
               network_g=dict(type='RGT', upscale=scale, **network), path=path or {}, **extra)
    return build_model(opt)


def _perturbed_tiny(seed: int = 3, **overrides) -> RGT:
    """TINY with every tensor nudged so that gamma, the zero-initialised biases and the DPB all matter."""
    torch.manual_seed(seed)
    net = RGT(**{**TINY, **overrides})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_unknown_variant_and_bad_arguments_are_named():
    with pytest.raises(KeyError, match='RGT-XL'):
        FAMILY.build('RGT-XL', 2)
    with pytest.raises(TypeError, match='split_sizes'):
        RGT(**{**TINY, 'split_sizes': [4, 8]})
    with pytest.raises(ValueError, match="resi_connection must be '1conv' or '3conv', got '2conv'"):
        RGT(**{**TINY, 'resi_connection': '2conv'})
    with pytest.raises(ValueError, match='num_heads=3'):
        RGT(**{**TINY, 'num_heads': [3, 3]})
    with pytest.raises(ValueError, match='attn_drop_rate=0.1'):
        RGT(**{**TINY, 'attn_drop_rate': 0.1})
    RGT(**{**TINY, 'upsampler': 'pixelshuffle'})  # official option files may carry it


def test_recursion_count_follows_the_official_rule():
    # training: max(int(log4(H // 4)), int(log4(W // 4))); eval: the same with 16, at least 2
    assert [recursion_steps(s, s, training=True) for s in (4, 15, 16, 63, 64, 256)] == [0, 0, 1, 1, 2, 3]
    assert [recursion_steps(s, s, training=False) for s in (16, 64, 255, 1023, 1024, 4096)] == [2, 2, 2, 2, 3, 4]
    assert recursion_steps(16, 64, training=True) == 2
    with pytest.raises(ValueError, match='at least 16x16 pixels in eval mode, got 9x13'):
        recursion_steps(9, 13, training=False)
    with pytest.raises(ValueError, match='at least 4x4 pixels in training mode, got 3x40'):
        recursion_steps(3, 40, training=True)
    with pytest.raises(ValueError, match='16x1100'):  # 3 reductions leave nothing of 16 rows
        recursion_steps(16, 1100, training=False)
    assert min_padded_size(9, 13) == (16, 16)
    assert min_padded_size(16, 1100) == (64, 1100)
    assert min_padded_size(40, 41) == (40, 41)


def test_rg_sa_reduces_recursively_with_one_shared_conv():
    rg_sa = RGT(**TINY).layers[0].blocks[1].attn
    reduced = []
    rg_sa.reduction1.register_forward_hook(lambda module, args, out: reduced.append(tuple(out.shape[-2:])))

    def run(height: int, width: int, training: bool) -> list[tuple[int, int]]:
        reduced.clear()
        rg_sa.train(training)
        with torch.no_grad():
            out = rg_sa(torch.rand(1, height * width, 24), height, width)
        assert out.shape == (1, height * width, 24)
        return list(reduced)

    assert run(64, 64, training=True) == [(16, 16), (4, 4)]
    assert run(32, 32, training=True) == [(8, 8)]
    assert run(32, 32, training=False) == [(8, 8), (2, 2)]  # eval: at least 2 recursions
    assert run(64, 1024, training=False) == [(16, 256), (4, 64), (1, 16)]


def test_rgt_model_pads_inputs_below_the_minimum_and_restores_train_mode():
    model = rgt_model(TINY, scale=2)
    model.net_g.train()
    for height, width in [(9, 13), (16, 200)]:
        lq = torch.from_numpy(photo('astronaut', 256)[:height, :width]).permute(2, 0, 1).float()[None] / 255
        model.lq = lq
        model.test()
        assert model.output.shape == (1, 3, 2 * height, 2 * width)
        assert torch.isfinite(model.output).all()
        assert model.net_g.training
    model.net_g.eval()
    with pytest.raises(ValueError, match=r'at least 16x16 pixels in eval mode, got 9x13 \(H x W\)'):
        model.net_g.layers[0].blocks[1].attn(torch.rand(1, 9 * 13, 24), 9, 13)  # RG-SA itself; RGT pads first


class _SizeCheckingNetwork(torch.nn.Module):
    """Stands in for RGT in eval mode: applies RGT's size rule, records the input size, upsamples x2."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recursion_steps(x.shape[-2], x.shape[-1], training=False)  # raises where RGT would
        self.seen.append(tuple(x.shape[-2:]))
        return torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')


def test_rgt_pads_very_elongated_inputs_for_the_recursion():
    net = RGT(**TINY).eval()
    seen = []
    net.conv_first.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    lq = torch.rand(1, 3, 16, 1030)  # 3 recursions for the width would leave 0 rows of 16
    with torch.no_grad():
        out = net(lq)
    assert seen == [(64, 1030)] and out.shape == (1, 3, 32, 2060)


def test_official_use_chop_runs_the_shared_tiling_with_the_official_chunk_size():
    model = rgt_model(TINY, scale=2, val={'use_chop': True})
    assert model.opt['val']['tile'] == {'tile_size': 232, 'tile_pad': 32, 'batch_size': 1}
    model.net_g = _SizeCheckingNetwork()
    model.lq = torch.rand(1, 3, 300, 250)
    model.test()
    assert model.output.shape == (1, 3, 600, 500)
    assert set(model.net_g.seen) == {(232, 232)} and len(model.net_g.seen) == 4
    model = rgt_model(TINY, scale=2, val={'use_chop': True}, tile={'tile_size': 64, 'tile_pad': 8})
    assert 'tile' not in model.opt['val']  # an explicit tile block wins


def test_tiles_smaller_than_the_minimum_are_padded_per_tile():
    model = rgt_model(TINY, scale=2, tile={'tile_size': 12, 'tile_pad': 4})
    seen = []
    model.net_g.conv_first.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    model.lq = torch.rand(1, 3, 20, 30)
    model.test()
    assert model.output.shape == (1, 3, 40, 60) and torch.isfinite(model.output).all()
    assert set(seen) == {(16, 16)}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _load_report(messages: list[str]) -> tuple[set[str], set[str]]:
    """(tensors skipped for another shape, network tensors missing from the checkpoint) from the load warnings."""
    lines = [line.strip() for message in messages for line in message.splitlines()]
    shape_pattern = re.compile(r'shape mismatch \(kept at initialisation\): (\S+?):')
    missing_pattern = re.compile(r'missing in checkpoint \(kept at initialisation\): (\S+)$')
    shape = {m.group(1) for m in map(shape_pattern.match, lines) if m}
    missing = {m.group(1) for m in map(missing_pattern.match, lines) if m}
    return shape, missing


@pytest.mark.parametrize('scale, skipped, missing', [
    (3, {'upsample.0.weight', 'upsample.0.bias'}, set()),
    (4, set(), {'upsample.2.weight', 'upsample.2.bias'}),
])
def test_x3_x4_initialise_from_x2_weights_through_our_option_files(tmp_path, scale, skipped, missing):
    x2 = RGT(**TINY, upscale=2)
    x2_path = str(tmp_path / 'RGT_x2.pth')
    atomic_save({'params': x2.state_dict()}, x2_path)  # the released checkpoints' layout
    path_opt = load_options(f'options/train/RGT/train_RGT_S_SRx{scale}_from_x2.yml')['path']
    assert path_opt['strict_load_g'] is False and path_opt['pretrain_network_g'].endswith('RGT_S_x2.pth')
    log = _Warnings()
    logging.getLogger('basicsr').addHandler(log)
    try:
        model = rgt_model(TINY, scale=scale, path={**path_opt, 'pretrain_network_g': x2_path})
    finally:
        logging.getLogger('basicsr').removeHandler(log)
    assert _load_report(log.lines) == (skipped, missing)
    loaded = model.net_g.state_dict()
    for key, value in x2.state_dict().items():
        if key not in skipped:
            assert torch.equal(loaded[key], value), key
    assert all(not torch.equal(loaded[k], x2.state_dict()[k]) for k in skipped)


@pytest.mark.parametrize('model', ['RGT_S', 'RGT'])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_option_files_follow_the_official_recipe(model, scale):
    variant = FAMILY.variants[model.replace('_', '-')]
    recipe = 'scratch' if scale == 2 else 'from_x2'
    train_file = f'options/train/RGT/train_{model}_SRx{scale}_{recipe}.yml'
    test_file = f'options/test/RGT/test_{model}_SRx{scale}.yml'
    train, test = load_options(train_file), load_options(test_file)
    validate_options(train, train_file, is_train=True, check_paths=False)
    validate_options(test, test_file, is_train=False, check_paths=False)
    for opt in (train, test):
        network = dict(opt['network_g'])
        assert network.pop('type') == 'RGT' and network.pop('upscale') == scale and network.pop('use_chk') is False
        assert network == variant
        assert opt['model_type'] == 'RGTModel' and opt['scale'] == scale and opt['num_gpu'] == 'auto'
    data = train['datasets']['train']
    assert data['dataroot_gt'] == 'datasets/DF2K/DF2K_HR_sub'
    assert data['dataroot_lq'] == f'datasets/DF2K/DF2K_bicx{scale}_sub'
    assert (data['gt_size'], data['batch_size_per_gpu']) == (64 * scale, 8)
    assert train['train']['optim_g'] == dict(type='Adam', lr=2e-4, weight_decay=0, betas=[0.9, 0.99])
    assert train['train']['scheduler'] == dict(type='MultiStepLR', milestones=[250000, 400000, 450000, 475000],
                                               gamma=0.5)
    assert train['train']['total_iter'] == 500000 and 'ema_decay' not in train['train']
    assert train['manual_seed'] == 10 and train['dist_params'] == dict(backend='nccl', port=29500)
    if scale == 2:
        assert train['path']['pretrain_network_g'] is None and train['path']['strict_load_g'] is True
    else:
        assert train['path']['pretrain_network_g'] == f'experiments/pretrained_models/{model}_x2.pth'
        assert train['path']['strict_load_g'] is False
    assert test['path'] == dict(pretrain_network_g=f'experiments/pretrained_models/{model}_x{scale}.pth',
                                param_key_g='params', strict_load_g=True)
    assert [d['name'] for d in test['datasets'].values()] == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
    assert all(d['dataroot_lq'].endswith(f'LR_bicubic/X{scale}') for d in test['datasets'].values())
    assert {m['crop_border'] for m in test['val']['metrics'].values()} == {scale}


@pytest.mark.slow
def test_tiny_rgt_trains_from_our_option_file_and_beats_bicubic(tmp_path):
    scale, iters = 2, TRAIN_ITERS
    hr_dir, lr_dir = make_paired_folder(str(tmp_path / 'train'), scale, TRAIN_PHOTOS, max_side=240)
    val_hr, val_lr = make_paired_folder(str(tmp_path / 'heldout'), scale, HELDOUT_PHOTOS, size=128)
    network = dict(type='RGT', upscale=scale, **TINY)
    derive_options('options/train/RGT/train_RGT_S_SRx2_scratch.yml', {
        'name': 'tiny_rgt', 'num_gpu': 0, 'network_g': network,
        'datasets': {
            'train': dict(dataroot_gt=hr_dir, dataroot_lq=lr_dir, gt_size=64, batch_size_per_gpu=4,
                          num_worker_per_gpu=0, dataset_enlarge_ratio=200),
            'val': dict(name='heldout', dataroot_gt=val_hr, dataroot_lq=val_lr)},
        # the official milestones (50/80/90/95 % of the run) scaled to the short run
        'train': {'optim_g': {'lr': TRAIN_LR}, 'total_iter': iters,
                  'scheduler': {'milestones': [iters // 2, iters * 8 // 10, iters * 9 // 10, iters * 19 // 20]}},
        'val': {'val_freq': iters},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': iters, 'use_tb_logger': False},
    }, str(tmp_path / 'train.yml'))
    start, cpu_start = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    # one thread: OpenMP threads spinning on a shared, busy CPU make iterations many times slower
    run_script('train.py', ['-opt', str(tmp_path / 'train.yml')], cwd=str(tmp_path))
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu_start
    print(f'training {iters} iterations took {time.time() - start:.1f} s ({cpu:.1f} s CPU)')

    weights = extract_state_dict(load_checkpoint(str(tmp_path / 'experiments/tiny_rgt/models/net_g_latest.pth')))
    net = RGT(upscale=scale, **TINY)
    net.load_state_dict(weights, strict=True)
    ours, bicubic = heldout_psnrs(net, scale)
    set_ours, set_bicubic = pooled_psnr(ours), pooled_psnr(bicubic)
    print(f'held-out PSNR-Y x{scale} over the set: RGT-tiny {set_ours:.2f} dB, bicubic {set_bicubic:.2f} dB; '
          f'mean of per-photo PSNRs {np.mean(ours):.2f} vs {np.mean(bicubic):.2f}; '
          f'per photo {[round(p, 2) for p in ours]} vs {[round(p, 2) for p in bicubic]}')
    assert set_ours > set_bicubic
    assert sum(o > b for o, b in zip(ours, bicubic)) >= 2  # the textured photos; retina needs a longer run
