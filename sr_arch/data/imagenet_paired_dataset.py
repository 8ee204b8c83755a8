"""``ImageNetPairedDataset``: HR-only images whose LR is made on the fly (HAT's ImageNet pretraining).

Same samples as the official ``hat/data/imagenet_paired_dataset.py``: mod-crop to the scale, images
smaller than ``gt_size`` resized up (``cv2.resize``, bilinear) to at least ``gt_size`` per side, LR =
basicsr's MATLAB-style bicubic ``imresize(gt, 1/scale)``, then in the train phase the paired random crop
(same random draws as basicsr's ``paired_random_crop``) and flips/rotations.

The speed-up (``fast_lr: true``, the default): in training only the HR crop plus a margin of
``LR_MARGIN`` LR pixels (aligned to the scale, clipped at the image border) is downsampled, and the LR
patch is cut from the interior of that. The bicubic kernel of a /s downsample spans 4s HR pixels, i.e.
+-2 LR pixels, so every LR pixel of the patch sees exactly the HR pixels it sees in the whole-image LR
(at the image border the cut shares the border, so the mirror padding is the same too). The result
equals the whole-image LR up to float32 summation order inside ``imresize`` (its matrix-vector
products change length with the input): a few 1e-7 at most, far below one 8-bit level (3.9e-3).
``fast_lr: false`` downsamples the whole image as the official code does.

Differences to the official dataset: returns ``lq_path`` (= ``gt_path``, so basicsr's validation can
name the images), a folder is scanned recursively for image files (ImageNet's class folders), errors
name the offending file/key/option, ``color: y`` converts from BGR (the official code treats the BGR
arrays as RGB).
"""
from __future__ import annotations

import os
import random
from typing import Any

import cv2
import numpy as np
from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.color_util import bgr2ycbcr
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY
from torch import Tensor
from torch.utils import data
from torchvision.transforms.functional import normalize

from sr_arch.utils.files import IMAGE_EXTENSIONS

#: LR pixels of context kept on each side of the crop before downsampling (bicubic support is 2 LR pixels)
LR_MARGIN = 2



def bicubic_lr(img_gt: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-style bicubic downsample: (H, W, C) float32 in [0, 1] -> (H/scale, W/scale, C) float32."""
    return np.ascontiguousarray(imresize(img_gt, 1 / scale), dtype=np.float32)


def crop_pair_fast(img_gt: np.ndarray, scale: int, lq_size: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """HR patch and its LR, downsampling only the patch plus ``LR_MARGIN`` LR pixels of context.

    Args:
        img_gt: (H, W, C) float32 HR image, H and W multiples of ``scale``.
        scale: downsampling factor.
        lq_size: LR patch side.
        top, left: patch position in LR pixels.

    Returns:
        (gt (lq_size*scale, lq_size*scale, C), lq (lq_size, lq_size, C)); lq equals
        ``bicubic_lr(img_gt, scale)[top:top+lq_size, left:left+lq_size]`` up to float summation order.
    """
    h_lq, w_lq = img_gt.shape[0] // scale, img_gt.shape[1] // scale
    m_top, m_left = min(LR_MARGIN, top), min(LR_MARGIN, left)
    m_bottom, m_right = min(LR_MARGIN, h_lq - top - lq_size), min(LR_MARGIN, w_lq - left - lq_size)
    region = img_gt[(top - m_top) * scale:(top + lq_size + m_bottom) * scale,
                    (left - m_left) * scale:(left + lq_size + m_right) * scale]
    img_lq = bicubic_lr(np.ascontiguousarray(region), scale)[m_top:m_top + lq_size, m_left:m_left + lq_size]
    img_gt = img_gt[top * scale:(top + lq_size) * scale, left * scale:(left + lq_size) * scale]
    return np.ascontiguousarray(img_gt), np.ascontiguousarray(img_lq)


@DATASET_REGISTRY.register()
class ImageNetPairedDataset(data.Dataset):
    """HR images -> {'lq': (C, h, w), 'gt': (C, h*scale, w*scale) float tensors in [0, 1], RGB,
    'lq_path', 'gt_path'}.

    Options: ``dataroot_gt``; ``meta_info_file`` (one path relative to ``dataroot_gt`` per line, first
    token used) or ``io_backend: {type: lmdb}`` (``dataroot_gt`` a BasicSR ``*.lmdb`` folder) or neither
    (recursive folder scan); ``scale``; ``gt_size`` (required for training); ``use_hflip``, ``use_rot``;
    ``fast_lr`` (default true); optional ``mean``, ``std``, ``color: y``; ``phase``.
    """

    def __init__(self, opt: dict[str, Any]):
        super().__init__()
        self.opt = opt
        name = opt.get('name', 'ImageNetPairedDataset')
        for key in ('dataroot_gt', 'scale', 'io_backend'):
            if key not in opt:
                raise KeyError(f'dataset {name!r} (ImageNetPairedDataset): option {key!r} is required')
        self.scale = int(opt['scale'])
        self.phase = opt.get('phase', 'train')
        self.gt_size = opt.get('gt_size')
        self.fast_lr = bool(opt.get('fast_lr', True))
        self.mean, self.std = opt.get('mean'), opt.get('std')
        if self.phase == 'train' and self.gt_size is None:
            raise KeyError(f'dataset {name!r} (ImageNetPairedDataset): option gt_size is required for training')
        if self.gt_size is not None and int(self.gt_size) % self.scale:
            raise ValueError(f'dataset {name!r} (ImageNetPairedDataset): gt_size {self.gt_size} is not a multiple '
                             f'of scale {self.scale}')

        self.gt_folder = opt['dataroot_gt']
        self.io_backend_opt = dict(opt['io_backend'])
        self.file_client: FileClient | None = None
        if self.io_backend_opt.get('type') == 'lmdb':
            if not os.path.isfile(os.path.join(self.gt_folder, 'meta_info.txt')):
                raise FileNotFoundError(f'dataset {name!r}: {self.gt_folder} is not a BasicSR lmdb folder '
                                        '(a *.lmdb folder with data.mdb and meta_info.txt)')
            self.io_backend_opt['db_paths'] = [self.gt_folder]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths = paths_from_lmdb(self.gt_folder)
        elif opt.get('meta_info_file'):
            self.paths = self._paths_from_meta_info(opt['meta_info_file'], name)
        else:
            self.paths = self._paths_from_folder(name)
        if not self.paths:
            raise ValueError(f'dataset {name!r}: no images found in {self.gt_folder}')

    def _paths_from_meta_info(self, meta_info_file: str, name: str) -> list[str]:
        if not os.path.isfile(meta_info_file):
            raise FileNotFoundError(
                f'dataset {name!r}: meta_info_file {meta_info_file} not found. It lists one image path relative '
                f'to dataroot_gt per line; make it with `sr-arch prepare meta-info -i {self.gt_folder} -o '
                f'{meta_info_file} --min-size {self.gt_size or 0}`, or remove the key to scan the folder')
        with open(meta_info_file) as f:
            return [os.path.join(self.gt_folder, line.split()[0]) for line in f if line.strip()]

    def _paths_from_folder(self, name: str) -> list[str]:
        if not os.path.isdir(self.gt_folder):
            raise FileNotFoundError(f'dataset {name!r}: dataroot_gt {self.gt_folder} is not a folder')
        paths = []
        for root, _, files in os.walk(self.gt_folder):
            paths += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        return sorted(paths)

    def read_image(self, path: str) -> np.ndarray:
        """(H, W, 3) float32 BGR in [0, 1] of a file path (disk) or key (lmdb)."""
        if self.file_client is None:
            backend_opt = dict(self.io_backend_opt)
            self.file_client = FileClient(backend_opt.pop('type'), **backend_opt)
        where = f'{path} in {self.gt_folder}' if self.io_backend_opt.get('type') == 'lmdb' else path
        try:
            content = self.file_client.get(path, 'gt')
        except OSError as err:
            raise OSError(f'ImageNetPairedDataset: cannot read {where}: {err}') from err
        img = None if content is None else cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'ImageNetPairedDataset: {where} is not a readable image')
        return img.astype(np.float32) / 255.0

    def prepare_gt(self, img_gt: np.ndarray) -> np.ndarray:
        """Mod-crop to the scale; resize (bilinear) up so both sides are at least ``gt_size``."""
        h, w = img_gt.shape[0] - img_gt.shape[0] % self.scale, img_gt.shape[1] - img_gt.shape[1] % self.scale
        img_gt = img_gt[:h, :w]
        if self.gt_size is not None and (h < self.gt_size or w < self.gt_size):
            img_gt = cv2.resize(img_gt, (max(w, self.gt_size), max(h, self.gt_size)))
        return np.ascontiguousarray(img_gt, dtype=np.float32)

    def random_pair(self, img_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Random (gt_size, gt_size) HR patch and its LR; the random draws of ``paired_random_crop``."""
        lq_size = self.gt_size // self.scale
        h_lq, w_lq = img_gt.shape[0] // self.scale, img_gt.shape[1] // self.scale
        top = random.randint(0, h_lq - lq_size)
        left = random.randint(0, w_lq - lq_size)
        if self.fast_lr:
            return crop_pair_fast(img_gt, self.scale, lq_size, top, left)
        img_lq = bicubic_lr(img_gt, self.scale)[top:top + lq_size, left:left + lq_size]
        img_gt = img_gt[top * self.scale:(top + lq_size) * self.scale, left * self.scale:(left + lq_size) * self.scale]
        return np.ascontiguousarray(img_gt), np.ascontiguousarray(img_lq)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        gt_path = self.paths[index]
        img_gt = self.prepare_gt(self.read_image(gt_path))
        if self.phase == 'train':
            img_gt, img_lq = self.random_pair(img_gt)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        else:
            img_lq = bicubic_lr(img_gt, self.scale)
        if self.opt.get('color') == 'y':
            # the official dataset calls rgb2ycbcr on these BGR arrays (wrong Y); basicsr's datasets use bgr2ycbcr
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': gt_path, 'gt_path': gt_path}

    def __len__(self) -> int:
        return len(self.paths)
