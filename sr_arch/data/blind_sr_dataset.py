"""Synthetic blind-SR pairs made on the fly from HR images: IKC/DAN "setting 1" (LabNet's training data).

HR (folder or LMDB) -> random crop + flips/rot90 -> Gaussian blur (21x21, reflect padding, as DAN's
``BatchBlur``) -> MATLAB-style bicubic downsampling (basicsr ``imresize``) -> optional Gaussian noise ->
clamp and 8-bit quantisation (``sr_arch.data.degradations``, shared with the Gaussian8 test-set writer).

Every sample draws its crop, flips, kernel and noise from its own generator keyed by (``seed``, index,
loader key). The loader key is read from the generators the data loader seeds: our ``train.py`` seeds
them per sample from (manual_seed, epoch, position in the epoch), so a run is reproducible under its
seeds, independent of the number of workers, and no two epochs, workers or repeated visits of an image
(dataset enlarge ratio) share a degradation. (basicsr's own loop re-seeds numpy identically in every
epoch; the torch seed of its workers still changes per epoch, so epochs differ there too.) In the
val/test phase the key is (seed, index) only and each HR image is degraded once per width of
``sigmas``.

Option keys (``datasets.<phase>`` of a BasicSR option file):
    dataroot_gt (str): HR folder, or ``*.lmdb`` with ``io_backend: {type: lmdb}``.
    io_backend (dict): ``{type: disk}`` or ``{type: lmdb}``.
    meta_info_file (str, optional): list of HR files (first column), disk backend only.
    scale (int): filled in by BasicSR from the top-level ``scale``.
    gt_size (int): HR patch side in the train phase (LR patch = gt_size / scale).
    use_hflip, use_rot (bool): augmentation in the train phase (default true).
    blur_kernel_size (int): odd kernel side, default 21.
    blur_sigma ([float, float]): width range of the Gaussian; default x2 [0.2, 2.0], x3/x4 [0.2, 4.0].
    aniso_prob (float): probability of an anisotropic kernel (sigma_x, sigma_y ~ U(blur_sigma),
        angle ~ U(-pi, pi)); default 0 (isotropic only, as LabNet).
    noise_range ([float, float], optional): Gaussian noise std on the LR, in 8-bit levels (0-255).
    seed (int): default 0.
    sigmas (list[float] or 'gaussian8', val/test only): fixed widths; every image appears once per
        width ('gaussian8': the eight widths of the scale). Without it each image gets one width
        drawn from ``blur_sigma`` under (seed, index).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import FileClient, imfrombytes, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from sr_arch.data.degradations import degrade, gaussian_kernel, mod_crop
from sr_arch.data.gaussian8 import gaussian8_sigmas

#: blur width range of the training degradation per scale (IKC/DAN setting 1, LabNet's train ymls)
DEFAULT_SIGMA_RANGE = {2: (0.2, 2.0), 3: (0.2, 4.0), 4: (0.2, 4.0)}


def _range(opt: dict, key: str, default: Sequence[float] | None) -> tuple[float, float] | None:
    value = opt.get(key, default)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or value[0] > value[1] or value[0] < 0):
        raise ValueError(f'BlindSRDataset: option {key} must be [low, high] with 0 <= low <= high, got {value!r}')
    return float(value[0]), float(value[1])


@DATASET_REGISTRY.register()
class BlindSRDataset(data.Dataset):
    """HR images -> on-the-fly blurred, bicubic-downsampled, quantised LR (see the module docstring).

    Each item: ``lq`` (3, h, w) and ``gt`` (3, h*scale, w*scale) float RGB in [0, 1]; ``lq_path`` and
    ``gt_path`` (str; ``lq_path`` names a virtual file ``<stem>_sig<sigma>``); ``sigma`` (float, the blur
    width; sigma_x for anisotropic kernels); ``kernel_params`` (3,) tensor (sigma_x, sigma_y, angle);
    ``noise_level`` (float, 8-bit levels).
    """

    def __init__(self, opt: dict[str, Any]):
        super().__init__()
        self.opt = opt
        self.train = opt.get('phase', 'train') == 'train'
        self.scale = opt.get('scale')
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"BlindSRDataset: scale must be a positive integer, got {self.scale!r}")
        self.kernel_size = opt.get('blur_kernel_size', 21)
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int) or self.kernel_size % 2 == 0:
            raise ValueError(f'BlindSRDataset: blur_kernel_size must be an odd integer, got {self.kernel_size!r}')
        if 'blur_sigma' not in opt and self.scale not in DEFAULT_SIGMA_RANGE:
            raise ValueError(f'BlindSRDataset: no default blur_sigma for scale {self.scale}; '
                             'set blur_sigma: [low, high]')
        self.sigma_range = _range(opt, 'blur_sigma', DEFAULT_SIGMA_RANGE.get(self.scale))
        if self.sigma_range[0] <= 0:
            raise ValueError(f'BlindSRDataset: blur_sigma must be > 0, got {list(self.sigma_range)}')
        self.aniso_prob = float(opt.get('aniso_prob', 0.0))
        if not 0.0 <= self.aniso_prob <= 1.0:
            raise ValueError(f'BlindSRDataset: aniso_prob must be in [0, 1], got {self.aniso_prob!r}')
        self.noise_range = _range(opt, 'noise_range', None)
        self.seed = int(opt.get('seed', 0))
        self.sigmas = self._fixed_sigmas(opt.get('sigmas'))
        if self.sigmas and self.train:
            raise ValueError('BlindSRDataset: sigmas (fixed widths) is for val/test datasets; '
                             'the train phase draws widths from blur_sigma')
        if any(s <= 0 for s in self.sigmas):
            raise ValueError(f'BlindSRDataset: sigmas must be > 0, got {self.sigmas}')
        if self.train:
            self.gt_size = opt.get('gt_size')
            if isinstance(self.gt_size, bool) or not isinstance(self.gt_size, int) or self.gt_size % self.scale:
                raise ValueError(f'BlindSRDataset: gt_size must be an integer multiple of scale {self.scale} '
                                 f'in the train phase, got {self.gt_size!r}')

        self.gt_folder = opt['dataroot_gt']
        self.io_backend_opt = dict(opt['io_backend'])
        self.file_client: FileClient | None = None
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [self.gt_folder]
            self.io_backend_opt['client_keys'] = ['gt']
            if not os.path.isfile(os.path.join(self.gt_folder, 'meta_info.txt')):
                raise FileNotFoundError(f'BlindSRDataset: dataroot_gt {self.gt_folder} is not an LMDB made by '
                                        'basicsr (no meta_info.txt)')
            self.paths = paths_from_lmdb(self.gt_folder)
        elif opt.get('meta_info_file'):
            with open(opt['meta_info_file']) as f:
                self.paths = [os.path.join(self.gt_folder, line.split(' ')[0].strip()) for line in f if line.strip()]
        else:
            if not os.path.isdir(self.gt_folder):
                raise FileNotFoundError(f'BlindSRDataset: dataroot_gt {self.gt_folder} is not a folder')
            self.paths = sorted(scandir(self.gt_folder, full_path=True))
        if not self.paths:
            raise ValueError(f'BlindSRDataset: no HR images under {self.gt_folder}')

    def _fixed_sigmas(self, value: Any) -> list[float]:
        if value is None:
            return []
        if value == 'gaussian8':
            return gaussian8_sigmas(self.scale)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"BlindSRDataset: sigmas must be a list of widths or 'gaussian8', got {value!r}")
        return [float(v) for v in value]

    def __len__(self) -> int:
        return len(self.paths) * max(len(self.sigmas), 1)

    def _rng(self, index: int) -> np.random.Generator:
        if not self.train:
            return np.random.default_rng([self.seed, index])
        # The sample's key comes from the generators the loader seeds: our train.py seeds torch and numpy
        # per sample from (manual_seed, epoch, position); plain DataLoader workers get a fresh torch seed
        # every epoch; in a plain main process numpy's stream advances from sample to sample.
        loader_key = [torch.initial_seed(), int(np.random.randint(0, 2 ** 31))]
        return np.random.default_rng([self.seed, index, *loader_key])

    def _read_hr(self, path: str) -> np.ndarray:
        if self.file_client is None:
            backend = dict(self.io_backend_opt)
            self.file_client = FileClient(backend.pop('type'), **backend)
        try:
            img = imfrombytes(self.file_client.get(path, 'gt'), float32=True)
        except Exception as err:  # cv2/lmdb errors do not name the file
            raise OSError(f'BlindSRDataset: cannot read HR image {path} ({type(err).__name__}: {err})') from err
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return img[..., :3]

    def _crop_and_augment(self, img: np.ndarray, rng: np.random.Generator, path: str) -> np.ndarray:
        h, w = img.shape[:2]
        size = self.gt_size
        if h < size or w < size:
            raise ValueError(f'BlindSRDataset: HR image {path} ({h}x{w}) is smaller than gt_size {size}')
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        img = img[top:top + size, left:left + size]
        flips = rng.random(3) < 0.5
        if self.opt.get('use_hflip', True) and flips[0]:
            img = img[:, ::-1]
        if self.opt.get('use_rot', True):
            if flips[1]:
                img = img[::-1]
            if flips[2]:
                img = img.transpose(1, 0, 2)
        return np.ascontiguousarray(img)

    def _draw_kernel(self, rng: np.random.Generator, fixed_sigma: float | None
                     ) -> tuple[np.ndarray, tuple[float, float, float]]:
        if fixed_sigma is not None:
            return gaussian_kernel(self.kernel_size, fixed_sigma), (fixed_sigma, fixed_sigma, 0.0)
        low, high = self.sigma_range
        if self.aniso_prob > 0 and rng.random() < self.aniso_prob:
            sigma_x, sigma_y = float(rng.uniform(low, high)), float(rng.uniform(low, high))
            angle = float(rng.uniform(-math.pi, math.pi))
            return gaussian_kernel(self.kernel_size, sigma_x, sigma_y, angle), (sigma_x, sigma_y, angle)
        sigma = float(rng.uniform(low, high))
        return gaussian_kernel(self.kernel_size, sigma), (sigma, sigma, 0.0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        num_widths = max(len(self.sigmas), 1)
        image_index, width_index = divmod(index, num_widths)
        gt_path = self.paths[image_index]
        rng = self._rng(index)
        img = self._read_hr(gt_path)
        img = self._crop_and_augment(img, rng, gt_path) if self.train else mod_crop(img, self.scale)
        gt = img2tensor(img, bgr2rgb=True, float32=True)

        kernel, (sigma_x, sigma_y, angle) = self._draw_kernel(rng, self.sigmas[width_index] if self.sigmas else None)
        noise_level = float(rng.uniform(*self.noise_range)) if self.noise_range else 0.0
        lq = degrade(gt, kernel, self.scale, noise_level / 255.0, rng)

        stem, ext = os.path.splitext(os.path.basename(gt_path))
        lq_path = os.path.join(os.path.dirname(gt_path), f'{stem}_sig{sigma_x:.2f}{ext}')
        return {'lq': lq, 'gt': gt, 'lq_path': lq_path, 'gt_path': gt_path, 'sigma': sigma_x,
                'kernel_params': torch.tensor([sigma_x, sigma_y, angle], dtype=torch.float32),
                'noise_level': noise_level}
