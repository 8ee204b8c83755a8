"""HAT family specifics: the official index buffers, argument errors, HATModel padding, ImageNetPairedDataset,
our option files, and tiny trainings from those option files (the rules every family keeps are in
test_arch_contract.py)."""
from __future__ import annotations

import glob
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import yaml
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from helpers import (
    HELDOUT_PHOTOS,
    REPO_ROOT,
    TRAIN_PHOTOS,
    bicubic_downsample,
    derive_options,
    golden_cases,
    heldout_psnrs,
    load_golden,
    load_options,
    make_paired_folder,
    photo,
    pooled_psnr,
    psnr_y,
    run_script,
    upscale_with,
)
from sr_arch.archs.hat_arch import FAMILY, HAT
from sr_arch.archs.layers import pad_to_multiple
from sr_arch.data.imagenet_paired_dataset import ImageNetPairedDataset, bicubic_lr, crop_pair_fast
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

#: a narrow HAT with every part: 2 groups of 2 HABs (one shifted) + OCAB, window 8 (as the golden vectors)
TINY = dict(embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=8, compress_ratio=3, squeeze_factor=4,
            img_size=32, mlp_ratio=2, upsampler='pixelshuffle')
TRAIN_OPTIONS = sorted(glob.glob(os.path.join(REPO_ROOT, 'options/train/HAT/*.yml')))
TEST_OPTIONS = sorted(glob.glob(os.path.join(REPO_ROOT, 'options/test/HAT/*.yml')))
#: written by the real-world engineer, not part of this family's classic-SR recipes
REAL_WORLD_FILES = {'train_Real_HAT_SRx4_mse_model.yml', 'train_Real_HAT_GAN_SRx4_finetune_from_mse_model.yml',
                    'test_HAT_GAN_Real_SRx4.yml'}


def to_tensor(img_rgb_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img_rgb_uint8)).permute(2, 0, 1).float()[None] / 255.0


# ---------------------------------------------------------------------------------------------- the arch

@pytest.mark.parametrize('case', golden_cases('hat'))
def test_index_buffers_have_the_official_values(case):
    golden = load_golden(case)
    net = HAT(**golden['kwargs'])
    for buffer in ('relative_position_index_SA', 'relative_position_index_OCA'):  # our formulas, official values
        assert torch.equal(net.state_dict()[buffer], golden['state_dict'][buffer]), buffer


@pytest.mark.parametrize('upsampler', ['', 'pixelshuffledirect', 'nearest+conv', None])
def test_upsampler_other_than_pixelshuffle_is_refused(upsampler):
    with pytest.raises(ValueError, match=r'upsampler=.* is not supported; set `upsampler: pixelshuffle`'):
        HAT(**{**TINY, 'upsampler': upsampler})


@pytest.mark.parametrize('change, error, message', [
    (dict(windows_size=8), TypeError, r"unknown arguments \['windows_size'\]"),
    (dict(window_size=7, img_size=64), ValueError, r'window_size 7 with overlap_ratio 0.5 gives an overlapping '
                                                   r'window 10'),
    (dict(num_heads=[5, 2]), ValueError, r'embed_dim 24 is not divisible by num_heads \[5\]'),
    (dict(depths=[2, 2, 2]), ValueError, r'depths \[2, 2, 2\] and num_heads \[2, 2\] must have the same length'),
    (dict(resi_connection='3conv'), ValueError, r"resi_connection must be '1conv' or 'identity', got '3conv'"),
    (dict(img_size=4), ValueError, r'img_size/patch_size \(4, 4\) is smaller than window_size 8'),
    (dict(upscale=5), ValueError, r'upscale must be a power of 2 or 3, got 5'),
    (dict(attn_drop_rate=0.1), ValueError, r'attn_drop_rate=0.1 is not supported'),
])
def test_bad_arguments_are_named(change, error, message):
    with pytest.raises(error, match=message):
        HAT(**{**TINY, **change})


def test_unknown_variant_is_named():
    with pytest.raises(KeyError, match=r"unknown HAT variant 'HAT-M'; known: \['HAT', 'HAT-L', 'HAT-S'\]"):
        FAMILY.build('HAT-M', 2)


def test_input_with_other_channels_is_refused():
    net = HAT(**TINY).eval()
    with pytest.raises(ValueError, match=r'expects a \(B, 3, H, W\) batch, got \(1, 1, 16, 16\)'):
        net(torch.rand(1, 1, 16, 16))


# ---------------------------------------------------------------------------------------------- HATModel

def hat_model(network: dict, scale: int = 2, **extra):
    """A HATModel in test mode on the CPU (basicsr's build_model, as test.py builds it)."""
    opt = dict(model_type='HATModel', name='hat_test', scale=scale, num_gpu=0, is_train=False, dist=False,
               network_g=dict(type='HAT', upscale=scale, **network), path={}, **extra)
    return build_model(opt)


@pytest.mark.parametrize('height, width', [(1, 1), (1, 20), (7, 16), (17, 5), (16, 16), (30, 33)])
def test_hat_model_pads_to_the_window_and_crops(height, width):
    torch.manual_seed(0)
    model = hat_model({**TINY, 'window_size': 16, 'img_size': 64})
    assert model.pad_multiple == 16
    lq = to_tensor(photo('astronaut', 64)[:height, :width])
    model.net_g.train()
    model.lq = lq
    model.test()
    assert model.net_g.training  # back to train mode
    assert model.output.shape == (1, 3, 2 * height, 2 * width)
    padded, _ = pad_to_multiple(lq, 16)
    pad_h, pad_w = -height % 16, -width % 16
    if pad_h < height and pad_w < width:  # reflect padding is possible: it is what the official HATModel does
        assert torch.equal(padded, F.pad(lq, (0, pad_w, 0, pad_h), mode='reflect'))
    with torch.no_grad():
        expected = model.net_g.eval()(padded)[..., :2 * height, :2 * width]
    assert (model.output - expected).abs().max() <= 1e-6


def test_validation_without_ema_returns_net_g_to_train_mode(tmp_path):
    hr_dir, lr_dir = make_paired_folder(str(tmp_path / 'val'), 2, HELDOUT_PHOTOS[:2], size=40)  # 20x20 LR: padded
    opt = dict(model_type='HATModel', name='hat_val', scale=2, num_gpu=0, is_train=True, dist=False, rank=0,
               world_size=1, network_g=dict(type='HAT', upscale=2, **TINY),
               path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None, models=str(tmp_path / 'm'),
                         training_states=str(tmp_path / 's'), experiments_root=str(tmp_path),
                         visualization=str(tmp_path / 'v'), log=str(tmp_path)),
               train=dict(ema_decay=0, optim_g=dict(type='Adam', lr=1e-4, betas=[0.9, 0.99]),
                          scheduler=dict(type='MultiStepLR', milestones=[10], gamma=0.5), total_iter=10,
                          warmup_iter=-1, pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean')),
               val=dict(metrics=dict(psnr=dict(type='calculate_psnr', crop_border=2, test_y_channel=True))))
    model = build_model(opt)
    assert not hasattr(model, 'net_g_ema') and model.net_g.training
    dataset = build_dataset(dict(name='heldout', type='PairedImageDataset', dataroot_gt=hr_dir, dataroot_lq=lr_dir,
                                 io_backend=dict(type='disk'), phase='val', scale=2))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    model.validation(loader, current_iter=1, tb_logger=None, save_img=False)
    assert model.net_g.training  # the official HATModel left it in eval mode here
    psnr = model.metric_results['psnr']
    assert np.isfinite(psnr) and psnr > 5


# ---------------------------------------------------------------------------------------------- the dataset

@pytest.mark.parametrize('scale', [2, 3, 4])
def test_fast_lr_equals_the_whole_image_lr_in_the_crop(scale):
    hr = photo('astronaut').astype(np.float32)[:151, :203] / 255.0
    hr = np.ascontiguousarray(hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale])
    whole = bicubic_lr(hr, scale)
    lq_size = 12
    h_lq, w_lq = whole.shape[:2]
    rng = random.Random(scale)
    corners = [(0, 0), (0, w_lq - lq_size), (h_lq - lq_size, 0), (h_lq - lq_size, w_lq - lq_size), (1, 1),
               (h_lq - lq_size - 1, 2)]
    positions = corners + [(rng.randint(0, h_lq - lq_size), rng.randint(0, w_lq - lq_size)) for _ in range(10)]
    worst, identical, total = 0.0, 0, 0
    for top, left in positions:
        gt, lq = crop_pair_fast(hr, scale, lq_size, top, left)
        assert np.array_equal(gt, hr[top * scale:(top + lq_size) * scale, left * scale:(left + lq_size) * scale])
        difference = np.abs(lq - whole[top:top + lq_size, left:left + lq_size])
        worst = max(worst, float(difference.max()))
        identical += int((difference == 0).sum())
        total += difference.size
    print(f'x{scale}: fast LR vs whole-image LR: max |diff| {worst:.2e}, {100 * identical / total:.1f}% bit-identical')
    # imresize's float32 matrix-vector products sum in a length-dependent order: a few ulp, never more
    assert worst <= 1e-6


def write_photos(folder: str, names, size: int | None = None, nested: bool = False, max_side: int | None = None,
                 ext: str = '.png') -> list[str]:
    """Bundled photos as image files (centre crops: ``size`` square or at most ``max_side`` per side);
    ``nested`` puts them into two class folders, as ImageNet's layout."""
    paths = []
    for i, name in enumerate(names):
        img = photo(name, size)
        if max_side is not None:
            h, w = min(img.shape[0], max_side), min(img.shape[1], max_side)
            top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            img = img[top:top + h, left:left + w]
        sub = os.path.join(folder, f'class{i % 2}') if nested else folder
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f'{name}{ext}')
        cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def imagenet_dataset(root: str, **opt) -> ImageNetPairedDataset:
    return build_dataset(dict(dict(name='imagenet', type='ImageNetPairedDataset', dataroot_gt=root,
                                   io_backend=dict(type='disk'), scale=2, gt_size=64, use_hflip=True, use_rot=True,
                                   phase='train'), **opt))


def test_imagenet_dataset_fast_and_whole_lr_give_the_same_samples(tmp_path):
    write_photos(str(tmp_path), ['coffee', 'chelsea', 'astronaut'], nested=True)
    write_photos(str(tmp_path / 'small'), ['cat'], size=48)  # smaller than gt_size 64: resized up first
    fast, whole = imagenet_dataset(str(tmp_path)), imagenet_dataset(str(tmp_path), fast_lr=False)
    assert len(fast) == 4 and fast.paths == sorted(fast.paths)  # recursive scan of the class folders
    for index in range(len(fast)):
        random.seed(index)
        a = fast[index]
        random.seed(index)
        b = whole[index]
        assert a['gt'].shape == (3, 64, 64) and a['lq'].shape == (3, 32, 32)
        assert a['lq_path'] == a['gt_path'] == fast.paths[index]
        assert torch.equal(a['gt'], b['gt'])
        assert (a['lq'] - b['lq']).abs().max() <= 1e-6


def test_imagenet_dataset_meta_info_lmdb_and_validation_phase(tmp_path):
    paths = write_photos(str(tmp_path / 'GT'), ['coffee', 'chelsea'], size=100, nested=True)
    meta = tmp_path / 'meta_info.txt'
    meta.write_text(''.join(f'{os.path.relpath(p, tmp_path / "GT")} (100,100,3)\n' for p in paths[::-1]))
    listed = imagenet_dataset(str(tmp_path / 'GT'), meta_info_file=str(meta))
    assert listed.paths == paths[::-1]  # first token of each line, in file order

    lmdb_path = str(tmp_path / 'GT.lmdb')
    gt_root = str(tmp_path / 'GT')
    make_lmdb_from_imgs(gt_root, lmdb_path, [os.path.relpath(p, gt_root) for p in paths],
                        [os.path.splitext(os.path.basename(p))[0] for p in paths], compress_level=1)
    from_lmdb = imagenet_dataset(lmdb_path, io_backend=dict(type='lmdb'), phase='val')
    sample = from_lmdb[0]
    hr = cv2.cvtColor(cv2.imread(paths[0]), cv2.COLOR_BGR2RGB)
    expected_lq = bicubic_lr(hr[:100, :100].astype(np.float32) / 255.0, 2)  # validation: the whole image
    assert sample['gt'].shape == (3, 100, 100) and sample['lq'].shape == (3, 50, 50)
    assert torch.allclose(sample['lq'], torch.from_numpy(expected_lq).permute(2, 0, 1), atol=1e-6)
    assert from_lmdb.opt['io_backend'] == {'type': 'lmdb'}  # the option dict is not mutated


def test_imagenet_dataset_errors_name_the_file_or_option(tmp_path):
    write_photos(str(tmp_path), ['coffee'], size=80)
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    dataset = imagenet_dataset(str(tmp_path))
    with pytest.raises(ValueError, match=r'broken\.png is not a readable image'):
        dataset[dataset.paths.index(str(tmp_path / 'broken.png'))]
    with pytest.raises(FileNotFoundError, match=r'meta_info_file .*missing\.txt not found'):
        imagenet_dataset(str(tmp_path), meta_info_file=str(tmp_path / 'missing.txt'))
    with pytest.raises(ValueError, match=r'gt_size 65 is not a multiple of scale 2'):
        imagenet_dataset(str(tmp_path), gt_size=65)
    with pytest.raises(KeyError, match=r'gt_size is required for training'):
        imagenet_dataset(str(tmp_path), gt_size=None)
    with pytest.raises(FileNotFoundError, match=r'is not a BasicSR lmdb folder'):
        imagenet_dataset(str(tmp_path), io_backend=dict(type='lmdb'))
    (tmp_path / 'list.txt').write_text('gone.png\n')
    with pytest.raises(OSError, match=r'cannot read .*gone\.png'):
        imagenet_dataset(str(tmp_path), meta_info_file=str(tmp_path / 'list.txt'))[0]


# ---------------------------------------------------------------------------------------------- option files

def released_weights() -> set[str]:
    names = {f'{m}_SRx{s}' for m in ('HAT-S', 'HAT') for s in (2, 3, 4)}
    return names | {f'{m}_SRx{s}_ImageNet-pretrain' for m in ('HAT', 'HAT-L') for s in (2, 3, 4)}


def test_option_files_cover_every_recipe_and_released_model():
    train = {os.path.basename(p)[len('train_'):-4] for p in TRAIN_OPTIONS} - {f[6:-4] for f in REAL_WORLD_FILES}
    expected = ({f'{m}_SRx{s}_from_scratch' for m in ('HAT', 'HAT-S') for s in (2, 3)}
                | {f'{m}_SRx4_finetune_from_SRx2' for m in ('HAT', 'HAT-S')}
                | {f'{m}_SRx{s}_{r}' for m in ('HAT', 'HAT-L') for s in (2, 3, 4)
                   for r in ('ImageNet_from_scratch', 'finetune_from_ImageNet_pretrain')})
    assert train == expected
    test = {os.path.basename(p)[len('test_'):-4] for p in TEST_OPTIONS} - {f[5:-4] for f in REAL_WORLD_FILES}
    assert test == released_weights()


OUR_OPTIONS = [p for p in TRAIN_OPTIONS + TEST_OPTIONS if os.path.basename(p) not in REAL_WORLD_FILES]


@pytest.mark.parametrize('path', OUR_OPTIONS, ids=os.path.basename)
def test_option_file_is_a_published_variant_with_fixed_official_bugs(path):
    opt = load_options(path)
    text = open(path).read()
    base = os.path.basename(path)[:-4]
    model, scale = base.split('_')[1], int(base.split('_SRx')[1][0])
    assert opt['name'] == base and opt['model_type'] == 'HATModel' and opt['scale'] == scale
    assert opt['num_gpu'] == 'auto' and opt['dist_params'] == {'backend': 'nccl', 'port': 29500}
    network = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    assert opt['network_g']['type'] == 'HAT' and network == FAMILY.variant_kwargs(model, scale)
    assert 'hct/' not in yaml.safe_dump(opt)  # only in the comments saying what was fixed
    assert {m['crop_border'] for m in opt['val']['metrics'].values()} == {scale}
    datasets = opt['datasets'].values()
    assert all(d[k].startswith('datasets/') for d in datasets for k in d if k.startswith('dataroot'))
    assert all(d.get('meta_info_file', 'datasets/meta_info/').startswith('datasets/meta_info/') for d in datasets)
    if base.startswith('test_'):
        assert [d['name'] for d in datasets] == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
        assert opt['path'] == {'pretrain_network_g': f'experiments/pretrained_models/{base[5:]}.pth',
                               'strict_load_g': True, 'param_key_g': 'params_ema'}
        return
    train, path_opt, data = opt['train'], opt['path'], opt['datasets']['train']
    assert data['batch_size_per_gpu'] == 4 and data['gt_size'] == 64 * scale and train['ema_decay'] == 0.999
    assert 'assumes 8 GPUs' in text
    if 'ImageNet_from_scratch' in base:
        assert data['type'] == 'ImageNetPairedDataset' and data['dataroot_gt'] == 'datasets/ImageNet/GT'
        assert data['meta_info_file'] == 'datasets/meta_info/meta_info_ImageNet_GT.txt'
        assert (train['optim_g']['lr'], train['total_iter']) == (2e-4, 800000)
        assert path_opt['pretrain_network_g'] is None
    elif 'finetune_from_ImageNet_pretrain' in base:
        pretrain = f'train_{model}_SRx{scale}_ImageNet_from_scratch'
        assert os.path.isfile(os.path.join(REPO_ROOT, 'options/train/HAT', pretrain + '.yml'))
        assert path_opt['pretrain_network_g'] == f'experiments/{pretrain}/models/net_g_latest.pth'
        assert (path_opt['param_key_g'], path_opt['strict_load_g']) == ('params_ema', True)
        assert (train['optim_g']['lr'], train['total_iter']) == (1e-5, 250000)
    elif 'finetune_from_SRx2' in base:
        assert path_opt['pretrain_network_g'] == f'experiments/train_{model}_SRx2_from_scratch/models/net_g_latest.pth'
        assert (path_opt['param_key_g'], path_opt['strict_load_g']) == ('params_ema', False)  # upsample.2 differs
        assert (train['optim_g']['lr'], train['total_iter']) == (1e-4, 250000)
    else:
        assert (train['optim_g']['lr'], train['total_iter']) == (2e-4, 500000)
    if data['type'] == 'PairedImageDataset':
        assert data['dataroot_gt'] == 'datasets/DF2K/DF2K_HR_sub'
        assert data['dataroot_lq'] == f'datasets/DF2K/DF2K_bicx{scale}_sub'
        assert data['meta_info_file'] == 'datasets/meta_info/meta_info_DF2Ksub_GT.txt'


def test_x4_finetune_really_needs_non_strict_loading():
    with torch.device('meta'):
        x2, x4 = FAMILY.build('HAT', 2).state_dict(), FAMILY.build('HAT', 4).state_dict()
    assert sorted(set(x4) - set(x2)) == ['upsample.2.bias', 'upsample.2.weight']
    assert all(x2[k].shape == x4[k].shape for k in x2)


# ---------------------------------------------------------------------------------------------- training

#: tiny training runs: network, patch/batch sizes, iterations; lr 10x and EMA / milestones scaled to the short run
TRAIN_ITERS = 1000
#: the ImageNet pre-training run (1000 iterations: +0.64 dB over bicubic; 500: 0.64 dB below it)
PRETRAIN_ITERS = 1000
#: training photos are centre crops of at most this many pixels per side
DATA_SIDE = 288
#: tiny networks on shared cores: OpenMP threads spin-waiting for each other cost far more than they gain
PRETRAIN_NAME = 'train_HAT_SRx2_ImageNet_from_scratch'


def tiny_training(name: str, iters: int, train_data: dict) -> dict:
    """Overrides that turn one of our HAT option files into a CPU run of ``iters`` iterations."""
    return {
        'name': name, 'num_gpu': 0, 'network_g': dict(TINY),
        'datasets': {'train': dict(train_data, meta_info_file=None, gt_size=16, batch_size_per_gpu=8,
                                   num_worker_per_gpu=0, dataset_enlarge_ratio=200),
                     'val_1': None, 'val_2': None, 'val_3': None},
        'train': {'ema_decay': 0.95, 'total_iter': iters, 'optim_g': {'lr': 2e-3},
                  'scheduler': {'milestones': [int(iters * f) for f in (0.5, 0.8, 0.9, 0.95)]}},
        'val': None,
        'logger': {'print_freq': max(iters // 3, 1), 'save_checkpoint_freq': iters, 'use_tb_logger': False,
                   'wandb': None},
    }


def assert_beats_bicubic_on_heldout_photos(checkpoint: str, scale: int = 2) -> None:
    """The trained tiny HAT (params_ema) against bicubic on the held-out photos (128 px centre crops), Y-PSNR.

    Asserted: the PSNR of the held-out set (pooled MSE) is higher than bicubic's, and so is the PSNR of
    every photo but at most one. The per-photo mean is printed but not asserted: the retina crop is so
    smooth that bicubic reaches 54 dB on it, which a few hundred CPU iterations cannot match (the network
    must learn its pixel-shuffle phase offsets to a fraction of a grey level).
    """
    net = HAT(**TINY, upscale=scale)
    net.load_state_dict(extract_state_dict(load_checkpoint(checkpoint), 'params_ema'), strict=True)
    ours, bicubic = heldout_psnrs(net, scale, pad_multiple=TINY['window_size'])
    print(f'held-out PSNR-Y x{scale} ({", ".join(HELDOUT_PHOTOS)}): tiny HAT {[round(p, 2) for p in ours]}, '
          f'bicubic {[round(p, 2) for p in bicubic]}; set {pooled_psnr(ours):.2f} vs {pooled_psnr(bicubic):.2f} dB, '
          f'mean {np.mean(ours):.2f} vs {np.mean(bicubic):.2f} dB')
    assert pooled_psnr(ours) > pooled_psnr(bicubic)
    assert sum(o > b for o, b in zip(ours, bicubic)) >= len(ours) - 1


def lmdb_pair(root: str, hr_dir: str, lr_dir: str) -> dict:
    """BasicSR LMDBs of a paired folder; returns the PairedImageDataset options that read them."""
    data = {'io_backend': {'type': 'lmdb'}}
    for key, folder in (('dataroot_gt', hr_dir), ('dataroot_lq', lr_dir)):
        files = sorted(os.listdir(folder))
        data[key] = os.path.join(root, f'{key}.lmdb')
        make_lmdb_from_imgs(folder, data[key], files, [f[:-4] for f in files], compress_level=0)
    return data


@pytest.fixture(scope='module')
def tiny_trainings(tmp_path_factory) -> str:
    """Two tiny HAT trainings from our option files, run side by side (one core each):

    * ``tiny_hat_lmdb``: train_HAT_SRx2_from_scratch.yml, PairedImageDataset on LMDB;
    * ``train_HAT_SRx2_ImageNet_from_scratch`` (name kept: the fine-tune file points at it):
      train_HAT_SRx2_ImageNet_from_scratch.yml, ImageNetPairedDataset on a folder of class folders.

    Returns the folder the experiments are in.
    """
    root = str(tmp_path_factory.mktemp('hat_training'))
    hr_dir, lr_dir = make_paired_folder(os.path.join(root, 'DF2K'), 2, TRAIN_PHOTOS, max_side=DATA_SIDE)
    derive_options('options/train/HAT/train_HAT_SRx2_from_scratch.yml',
                   tiny_training('tiny_hat_lmdb', TRAIN_ITERS, lmdb_pair(root, hr_dir, lr_dir)),
                   os.path.join(root, 'from_scratch.yml'))
    gt_dir = os.path.join(root, 'ImageNet/GT')
    write_photos(gt_dir, TRAIN_PHOTOS, nested=True, max_side=DATA_SIDE, ext='.bmp')  # .bmp: no decode cost
    pretrain = tiny_training(PRETRAIN_NAME, PRETRAIN_ITERS, dict(dataroot_gt=gt_dir))
    del pretrain['name']
    derive_options(f'options/train/HAT/{PRETRAIN_NAME}.yml', pretrain, os.path.join(root, 'pretrain.yml'))

    def train(option_file: str) -> float:
        start = time.time()
        run_script('train.py', ['-opt', option_file], cwd=root)
        return time.time() - start

    with ThreadPoolExecutor(max_workers=2) as pool:
        seconds = list(pool.map(train, [os.path.join(root, 'from_scratch.yml'), os.path.join(root, 'pretrain.yml')]))
    print(f'side by side: {TRAIN_ITERS} iterations {seconds[0]:.1f} s (PairedImageDataset, lmdb), '
          f'{PRETRAIN_ITERS} iterations {seconds[1]:.1f} s (ImageNetPairedDataset, folder)')
    return root


@pytest.mark.slow
def test_tiny_hat_trains_on_lmdb_from_our_option_file_and_beats_bicubic(tiny_trainings):
    checkpoint = os.path.join(tiny_trainings, 'experiments/tiny_hat_lmdb/models/net_g_latest.pth')
    assert_beats_bicubic_on_heldout_photos(checkpoint)


@pytest.mark.slow
def test_imagenet_pretraining_beats_bicubic_and_feeds_the_df2k_finetune(tiny_trainings, tmp_path):
    pretrained = os.path.join(tiny_trainings, f'experiments/{PRETRAIN_NAME}/models/net_g_latest.pth')
    assert_beats_bicubic_on_heldout_photos(pretrained)

    hr_dir, lr_dir = make_paired_folder(str(tmp_path / 'DF2K'), 2, TRAIN_PHOTOS, max_side=96)
    finetune_name = 'train_HAT_SRx2_finetune_from_ImageNet_pretrain'
    finetune = tiny_training(finetune_name, 2, dict(dataroot_gt=hr_dir, dataroot_lq=lr_dir))
    del finetune['name'], finetune['train']['ema_decay'], finetune['train']['optim_g']  # the recipe's lr 1e-5, EMA
    opt = derive_options(f'options/train/HAT/{finetune_name}.yml', finetune, str(tmp_path / 'finetune.yml'))
    assert opt['path']['pretrain_network_g'] == f'experiments/{PRETRAIN_NAME}/models/net_g_latest.pth'
    # step 2 runs where step 1 ran, as the recipe says, and finds its experiments/<name>/models/net_g_latest.pth
    run_script('train.py', ['-opt', str(tmp_path / 'finetune.yml')], cwd=tiny_trainings)
    start_weights = extract_state_dict(load_checkpoint(pretrained), 'params_ema')
    tuned = extract_state_dict(
        load_checkpoint(os.path.join(tiny_trainings, f'experiments/{finetune_name}/models/net_g_latest.pth')), 'params')
    assert tuned.keys() == start_weights.keys()
    # 2 Adam steps at lr 1e-5 move each weight by at most ~2e-5: the fine-tune started from the pretrained EMA
    assert max((tuned[k] - start_weights[k]).abs().max().item() for k in tuned) < 1e-4
    assert any(not torch.equal(tuned[k], start_weights[k]) for k in tuned)


@pytest.mark.slow
def test_our_test_option_file_runs_the_benchmark_with_a_trained_checkpoint(tiny_trainings, tmp_path):
    """test.py with options/test/HAT/test_HAT_SRx2.yml (paths and network size changed): strict params_ema
    loading, padding of LR sizes that are not multiples of the window, and the same PSNR as computed here."""
    checkpoint = os.path.join(tiny_trainings, 'experiments/tiny_hat_lmdb/models/net_g_latest.pth')
    hr_dir, lr_dir = make_paired_folder(str(tmp_path / 'heldout'), 2, HELDOUT_PHOTOS, size=108)  # LR 54x54
    derive_options('options/test/HAT/test_HAT_SRx2.yml', {
        'name': 'tiny_hat_benchmark', 'num_gpu': 0, 'network_g': dict(TINY),
        'datasets': {'test_1': {'name': 'heldout', 'dataroot_gt': hr_dir, 'dataroot_lq': lr_dir},
                     'test_2': None, 'test_3': None, 'test_4': None, 'test_5': None},
        'path': {'pretrain_network_g': checkpoint}, 'val': {'save_img': False},
    }, str(tmp_path / 'test.yml'))
    run_script('test.py', ['-opt', str(tmp_path / 'test.yml')], cwd=str(tmp_path))
    with open(tmp_path / 'results/tiny_hat_benchmark/summary.json') as f:
        reported = json.load(f)['heldout']['psnr']
    net = HAT(**TINY, upscale=2)
    net.load_state_dict(extract_state_dict(load_checkpoint(checkpoint), 'params_ema'), strict=True)
    expected = np.mean([psnr_y(upscale_with(net, lr, pad_multiple=8), hr, crop_border=2)
                        for hr, lr in ((photo(n, 108), bicubic_downsample(photo(n, 108), 2)) for n in HELDOUT_PHOTOS)])
    assert abs(reported - expected) < 1e-3
