"""Shared test helpers: golden vectors, real photos from scikit-image, tiny datasets, training runs.

Import as ``from helpers import ...`` (tests/ is on sys.path through conftest.py).
"""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from typing import Any, Iterable

import cv2
import numpy as np
import torch
import yaml

import sr_arch  # noqa: F401  (compat fixes must precede any basicsr import)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(REPO_ROOT, 'tests', 'golden')

#: colour photos bundled with scikit-image, used instead of noise everywhere in the tests
# 'chelsea' is the same picture as the held-out 'cat', so it is not a training photo
TRAIN_PHOTOS = ('astronaut', 'coffee', 'camera', 'rocket', 'immunohistochemistry', 'stereo_motorcycle')
HELDOUT_PHOTOS = ('hubble_deep_field', 'cat', 'retina')


def load_golden(case: str) -> dict[str, Any]:
    """One official test vector: name, family, kwargs, state_dict, input, output."""
    return torch.load(os.path.join(GOLDEN_DIR, f'{case}.pt'), map_location='cpu', weights_only=True)


def write_golden_checkpoint(case: str, path: str) -> dict[str, Any]:
    """Save a golden case's weights as this package's trainer does (``params`` + ``network_kwargs``); returns the
    golden case."""
    from sr_arch.archs import family_spec
    from sr_arch.archs.spec import NETWORK_KWARGS_KEY
    from sr_arch.utils.checkpoint import atomic_save

    golden = load_golden(case)
    spec = family_spec(golden['family'])
    full = spec.full_kwargs(golden['kwargs'])
    stored = {name: full[name] for name in spec.checkpoint.stored_kwargs}
    atomic_save({'params': golden['state_dict'], NETWORK_KWARGS_KEY: stored}, path)
    return golden


def golden_cases(family: str) -> list[str]:
    prefix = family.lower()
    return sorted(f[:-3] for f in os.listdir(GOLDEN_DIR) if f.startswith(prefix) and f.endswith('.pt'))


@functools.lru_cache(maxsize=1)
def golden_outputs(network_class: type, case: str, backend: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Two eval forwards of the golden input through ``network_class`` with the official weights (strict load).

    Returns (first output, second output: the one that reuses cached masks / biases, golden case).
    """
    from sr_arch.archs.layers import attention_backend

    golden = load_golden(case)
    net = network_class(**golden['kwargs'])
    net.load_state_dict(golden['state_dict'], strict=True)
    net.eval()
    with torch.no_grad(), attention_backend(backend):
        return net(golden['input']), net(golden['input']), golden


def golden_tolerance(output: torch.Tensor) -> float:
    """1e-5, relative to the output's magnitude where that exceeds 1.

    The golden outputs hold the official machine's float32 rounding. ESRT's (|output| up to 22) differ from a
    float64 evaluation of the same weights by 1.2e-5 already, so on another CPU's kernels an absolute 1e-5
    cannot hold for them; for outputs within [-1, 1] the bound is the absolute 1e-5.
    """
    return 1e-5 * max(1.0, output.abs().max().item())


def assert_matches_golden(network_class: type, case: str, backend: str) -> None:
    """Both forwards equal the official output within ``golden_tolerance``, and each other exactly."""
    out, again, golden = golden_outputs(network_class, case, backend)
    assert out.shape == golden['output'].shape
    diff = (out - golden['output']).abs().max().item()
    assert diff <= golden_tolerance(golden['output']), f'{case} ({backend}): max abs diff {diff}'
    assert torch.equal(out, again)


def load_manifests() -> dict[str, Any]:
    """``{'HAT-L x3': {'family', 'kwargs', 'params', 'state_dict': {name: [shape, dtype]}}, ...}``."""
    with open(os.path.join(GOLDEN_DIR, 'manifests.json')) as f:
        return json.load(f)


def photo(name: str, size: int | None = None) -> np.ndarray:
    """A bundled scikit-image photo as uint8 RGB (H, W, 3); centre-cropped to size x size if given."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs etc.: take the first image
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if size is not None:
        h, w = img.shape[:2]
        if min(h, w) < size:
            raise ValueError(f'photo {name} ({h}x{w}) is smaller than {size}')
        top, left = (h - size) // 2, (w - size) // 2
        img = img[top:top + size, left:left + size]
    return np.ascontiguousarray(img)


def bicubic_downsample(hr_rgb_uint8: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-style bicubic LR (basicsr.utils.matlab_functions.imresize), uint8 RGB."""
    from basicsr.utils.matlab_functions import imresize

    lr = imresize(hr_rgb_uint8.astype(np.float32) / 255.0, 1 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def make_paired_folder(root: str, scale: int, names: Iterable[str] = TRAIN_PHOTOS, size: int | None = None,
                       max_side: int = 240) -> tuple[str, str]:
    """Write HR (mod-cropped) and bicubic LR PNGs of bundled photos, BasicSR naming ``{name}.png``.

    Photos are first centre-cropped to ``size`` (or to at most ``max_side`` per side) to keep tests fast.

    Returns:
        (hr_folder, lr_folder)
    """
    hr_dir = os.path.join(root, 'HR')
    lr_dir = os.path.join(root, f'LR_bicubic/X{scale}')
    os.makedirs(hr_dir, exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    for name in names:
        img = photo(name, size)
        h, w = img.shape[:2]
        h, w = min(h, max_side), min(w, max_side)
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        img = img[top:top + h - h % scale, left:left + w - w % scale]
        lr = bicubic_downsample(img, scale)
        cv2.imwrite(os.path.join(hr_dir, f'{name}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(lr_dir, f'{name}.png'), cv2.cvtColor(lr, cv2.COLOR_RGB2BGR))
    return hr_dir, lr_dir


def deep_update(base: dict, overrides: dict) -> dict:
    """Recursively merge ``overrides`` into a copy of ``base``; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def tiny_options(paired: tuple[str, str], name: str, overrides: dict | None = None) -> dict:
    """A complete option dict: MSRResNet (8 features, 1 block) x2 on the photo crops of ``paired`` (HR, LR
    folders), batch 2, CPU, 4 iterations, a validation dataset but no validation; ``overrides`` deep-merged."""
    hr, lr = paired
    data = {'type': 'PairedImageDataset', 'dataroot_gt': hr, 'dataroot_lq': lr, 'io_backend': {'type': 'disk'}}
    opt = {
        'name': name, 'model_type': 'SRArchModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(data, name='train', gt_size=32, use_hflip=True, use_rot=True, num_worker_per_gpu=0,
                          batch_size_per_gpu=2, dataset_enlarge_ratio=1),
            'val': dict(data, name='val'),
        },
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                      'upscale': 2},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'total_iter': 4, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': None,
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 100, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    return deep_update(opt, overrides or {})


def write_options(folder, opt: dict, filename: str = 'options.yml') -> str:
    """``opt`` as YAML in ``folder``; returns the path."""
    path = os.path.join(str(folder), filename)
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def load_options(path: str) -> dict:
    """An option file as a dict; ``path`` relative to the repository root (or absolute)."""
    with open(os.path.join(REPO_ROOT, path)) as f:
        return yaml.safe_load(f)


def derive_options(src_yml: str, overrides: dict, dst_yml: str) -> dict:
    """Load one of our option files, apply ``overrides`` (deep merge) and write it to ``dst_yml``."""
    opt = deep_update(load_options(src_yml), overrides)
    with open(dst_yml, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return opt


#: subprocesses of the tests run on one thread: on a busy machine several OpenMP threads per process spin for
#: cores that other processes hold, and a run takes many times longer
ONE_THREAD = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}

#: time limit of one subprocess: a safety net for hangs, not a speed check (the slowest training run takes
#: about 3 minutes on an idle 2-core machine; this leaves room for a machine several times busier)
SUBPROCESS_TIMEOUT = 3600


def run_script(script: str, args: list[str], cwd: str, timeout: int = SUBPROCESS_TIMEOUT, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <repo>/<script> args`` in ``cwd`` on one thread and return the completed process (text)."""
    full_env = dict(os.environ, PYTHONPATH=REPO_ROOT, **ONE_THREAD)
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{script} {" ".join(args)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}')
    return proc


def psnr_y(sr_rgb_uint8: np.ndarray, hr_rgb_uint8: np.ndarray, crop_border: int) -> float:
    """basicsr's MATLAB-compatible PSNR on the Y channel (inputs uint8 RGB)."""
    from basicsr.metrics import calculate_psnr

    sr_bgr, hr_bgr = cv2.cvtColor(sr_rgb_uint8, cv2.COLOR_RGB2BGR), cv2.cvtColor(hr_rgb_uint8, cv2.COLOR_RGB2BGR)
    return float(calculate_psnr(sr_bgr, hr_bgr,
                                crop_border=crop_border, test_y_channel=True))


def upscale_with(net: torch.nn.Module, lr_rgb_uint8: np.ndarray, pad_multiple: int = 1) -> np.ndarray:
    """Run ``net`` in eval mode on one uint8 RGB LR image; returns uint8 RGB SR."""
    from sr_arch.archs.layers import pad_to_multiple

    x = torch.from_numpy(lr_rgb_uint8).permute(2, 0, 1).float().div(255.0)[None]
    h, w = x.shape[-2:]
    net.eval()
    with torch.no_grad():
        xp, _ = pad_to_multiple(x, pad_multiple)
        y = net(xp)
    scale = y.shape[-1] // xp.shape[-1]
    y = y[..., :h * scale, :w * scale].clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return np.round(y * 255.0).astype(np.uint8)


def bicubic_upscale(lr_rgb_uint8: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline of SR tables (MATLAB-style imresize up), uint8 RGB."""
    from basicsr.utils.matlab_functions import imresize

    up = imresize(lr_rgb_uint8.astype(np.float32) / 255.0, scale)
    return np.clip(np.round(up * 255.0), 0, 255).astype(np.uint8)


def pooled_psnr(psnrs: list[float]) -> float:
    """PSNR over all pixels of a set of equally sized images, from their per-image PSNRs (the mean MSE).

    Used instead of the mean of per-image PSNRs because one held-out photo (retina) is almost flat:
    bicubic reaches 49-54 dB there, and a network trained for a minute is not that precise yet.
    """
    return float(-10 * np.log10(np.mean([10 ** (-p / 10) for p in psnrs])))


def heldout_psnrs(net: torch.nn.Module, scale: int, pad_multiple: int = 1,
                  size: int = 128) -> tuple[list[float], list[float]]:
    """Y-PSNR (crop = scale) of ``net`` and of bicubic on the centre crops of HELDOUT_PHOTOS: (ours, bicubic)."""
    ours, bicubic = [], []
    for name in HELDOUT_PHOTOS:
        hr = photo(name, size)
        lr = bicubic_downsample(hr, scale)
        ours.append(psnr_y(upscale_with(net, lr, pad_multiple=pad_multiple), hr, crop_border=scale))
        bicubic.append(psnr_y(bicubic_upscale(lr, scale), hr, crop_border=scale))
    return ours, bicubic


def load_benchmark(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` as a module (its folder on sys.path, for its own ``from speed import``)."""
    import importlib.util

    folder = os.path.join(REPO_ROOT, 'benchmarks')
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    return module
