"""GRFormer family specifics: reflect padding, window orientation, the persistent masks, errors, option files,
training (the rules every family keeps are in test_arch_contract.py)."""
from __future__ import annotations

import time

import pytest
import torch

from helpers import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    derive_options,
    golden_cases,
    heldout_psnrs,
    load_options,
    make_paired_folder,
    pooled_psnr,
    run_script,
)
from sr_arch.archs.grformer_arch import FAMILY, GRFormer
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

GOLDEN = golden_cases('grformer')
SCALES = (2, 3, 4)
#: a GRFormer small enough for CPU tests, with both window orientations (depth 4: blocks 2, 3 are (Ww, Wh))
TINY = dict(img_size=32, embed_dim=24, depths=[4], num_heads=[2], window_size=[4, 8], mlp_ratio=2)


def tiny_grformer(upscale: int = 2, **overrides) -> GRFormer:
    return GRFormer(**{**TINY, 'upscale': upscale, **overrides})


def test_crop_of_padded_input_matches_network_padding():
    """Internal padding is the reflect padding the official check_image_size applies."""
    net = tiny_grformer(upscale=2).eval()
    x = torch.rand(1, 3, 13, 21)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3), mode='reflect')  # to the multiple of 8
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :26, :42], atol=1e-6)


def test_rectangle_windows_alternate_and_shift_is_not_swapped():
    with torch.device('meta'):
        net = FAMILY.build('GRFormer-light', 2)
    blocks = net.layers[0].blocks
    assert [b.window_size for b in blocks] == [(8, 32), (8, 32), (32, 8), (32, 8), (8, 32), (8, 32)]
    assert [b.shift_size for b in blocks] == [(0, 0), (4, 16), (0, 0), (4, 16), (0, 0), (4, 16)]
    assert blocks[3].attn.relative_position_bias_table.shape == (1, 63, 15, 2)


def test_persistent_mask_path_equals_on_the_fly_path():
    """A padded input of img_size uses the checkpoint's attn_mask buffers; other sizes compute (and cache) masks."""
    with_buffers = tiny_grformer(img_size=32).eval()
    on_the_fly = tiny_grformer(img_size=16).eval()
    weights = {k: v for k, v in with_buffers.state_dict().items() if not k.endswith('attn_mask')}
    missing, unexpected = on_the_fly.load_state_dict(weights, strict=False)
    assert set(missing) == {'layers.0.blocks.1.attn_mask', 'layers.0.blocks.3.attn_mask'} and not unexpected
    assert with_buffers.layers[0].blocks[1].attn_mask.min().item() == -1e9  # the official fill
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # the lean eval path: no shift masks at all (unmasked sub-windows, layers.window_order)
        lean = with_buffers(x)
        assert torch.allclose(lean, on_the_fly(x), atol=1e-6)
        assert not on_the_fly.layers[0].blocks[1].shift_masks.masks
    with torch.enable_grad():  # the masked formulation
        assert torch.allclose(with_buffers(x), lean, atol=1e-6)
        assert torch.allclose(on_the_fly(x), lean, atol=1e-6)
    assert not with_buffers.layers[0].blocks[1].shift_masks.masks
    blocks = on_the_fly.layers[0].blocks
    assert blocks[1].shift_masks is blocks[3].shift_masks  # one cache per network, keyed by window
    assert list(blocks[1].shift_masks.masks) == [
        (32, 32, blocks[i].window_size, blocks[i].shift_size, torch.device('cpu')) for i in (1, 3)]


@pytest.mark.parametrize('kwargs, message', [
    (dict(upsampler='pixelshuffle'), "upsampler 'pixelshuffle'"),
    (dict(resi_connection='3conv'), "resi_connection '3conv'"),
    (dict(embed_dim=25), 'embed_dim must be even'),
    (dict(embed_dim=26, num_heads=[4]), 'not divisible by num_heads 4'),
    (dict(window_size=[8]), 'window_size must be two integers'),
    (dict(depths=[2, 2]), 'same length'),
    (dict(windows_size=[8, 32]), "unknown argument(s) ['windows_size']"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as err:
        tiny_grformer(**kwargs)
    assert message in str(err.value)


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r'expects \(B, 3, H, W\) input, got \(1, 1, 8, 8\)'):
        tiny_grformer()(torch.rand(1, 1, 8, 8))


def test_variant_builder_rejects_unknown_names():
    with pytest.raises(KeyError, match='GRFormer-light'):
        FAMILY.build('GRFormer-huge', 2)


@pytest.mark.parametrize('scale', SCALES)
def test_option_files_follow_the_recipe(scale):
    train = load_options(f'options/train/GRFormer/train_GRFormer_light_SRx{scale}_scratch.yml')
    test = load_options(f'options/test/GRFormer/test_GRFormer_light_SRx{scale}.yml')
    variant = FAMILY.variant_kwargs('GRFormer-light', scale)
    for opt in (train, test):
        assert opt['model_type'] == 'GRModel' and opt['scale'] == scale
        net = {k: v for k, v in opt['network_g'].items() if k != 'type'}
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in net.items()} == variant
        assert {m['crop_border'] for m in opt['val']['metrics'].values()} == {scale}
    assert train['datasets']['train']['batch_size_per_gpu'] == 4
    assert train['datasets']['train']['gt_size'] == 64 * scale
    assert train['train']['optim_g'] == dict(type='Adam', lr=2e-4, weight_decay=0, betas=[0.9, 0.99])
    assert train['train']['scheduler'] == dict(type='MultiStepLR', milestones=[250000, 400000, 450000, 475000],
                                               gamma=0.5)
    assert train['train']['total_iter'] == 600000
    assert 'ema_decay' not in train['train'] and train['path']['pretrain_network_g'] is None
    assert [d['name'] for d in test['datasets'].values()] == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']


@pytest.mark.slow
def test_tiny_grformer_trains_from_our_option_file_and_beats_bicubic(tmp_path):
    scale, iters = 4, 500
    hr_dir, lr_dir = make_paired_folder(str(tmp_path / 'train'), scale, TRAIN_PHOTOS, max_side=192)
    val_hr, val_lr = make_paired_folder(str(tmp_path / 'heldout'), scale, HELDOUT_PHOTOS, max_side=128)
    network = dict(type='GRFormer', upscale=scale, drop_path_rate=0.0, **TINY)
    derive_options(f'options/train/GRFormer/train_GRFormer_light_SRx{scale}_scratch.yml', {
        'name': 'tiny_grformer', 'num_gpu': 0, 'network_g': network,
        'datasets': {
            'train': dict(dataroot_gt=hr_dir, dataroot_lq=lr_dir, gt_size=16 * scale, batch_size_per_gpu=8,
                          num_worker_per_gpu=0, dataset_enlarge_ratio=100),
            'val_1': dict(name='heldout', dataroot_gt=val_hr, dataroot_lq=val_lr),
            'val_2': None, 'val_3': None, 'val_4': None},
        'train': {'optim_g': {'lr': 2e-3}, 'scheduler': {'milestones': [250, 375, 450]}, 'total_iter': iters},
        'val': {'val_freq': iters},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': iters, 'use_tb_logger': False},
    }, str(tmp_path / 'train.yml'))
    start = time.time()
    # one thread: OpenMP threads spinning on a shared, busy CPU made iterations ~20x slower
    run_script('train.py', ['-opt', str(tmp_path / 'train.yml')], cwd=str(tmp_path))
    print(f'training {iters} iterations took {time.time() - start:.1f} s')

    weights = extract_state_dict(load_checkpoint(str(tmp_path / 'experiments/tiny_grformer/models/net_g_latest.pth')))
    net = GRFormer(**{k: v for k, v in network.items() if k != 'type'})
    net.load_state_dict(weights, strict=True)
    ours, bicubic = heldout_psnrs(net, scale)
    print(f'held-out PSNR-Y x{scale}, all pixels pooled: GRFormer-tiny {pooled_psnr(ours):.2f} dB, '
          f'bicubic {pooled_psnr(bicubic):.2f} dB; per photo {HELDOUT_PHOTOS}: {[round(p, 2) for p in ours]} '
          f'vs {[round(p, 2) for p in bicubic]}')
    # the nearly flat retina crop (bicubic ~49 dB) needs ~800 iterations to match; the textured photos win earlier
    assert pooled_psnr(ours) > pooled_psnr(bicubic)
    assert sum(o > b for o, b in zip(ours, bicubic)) >= 2

