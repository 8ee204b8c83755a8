"""Data-loading throughput: samples/s of the training datasets on the same images, one process.

    .venv/bin/python benchmarks/data_pipeline.py [--scale 4] [--gt-size 256] [--samples 200] [--workdir DIR]

Builds a DF2K-like set from the photos bundled with scikit-image (480 px HR sub-images with
``sr-arch prepare subimages``, bicubic LR with ``prepare bicubic``, LMDBs with ``prepare lmdb``, and the
same HR sub-images as JPEG q95 in class folders with a ``prepare meta-info`` file, as an ImageNet
stand-in), then times ``dataset[i]`` (decode, crop, flips/rotations, to tensor; plus the on-the-fly
bicubic LR for ImageNetPairedDataset) for:

* PairedImageDataset, PNG folders (io_backend disk)
* PairedImageDataset, LMDB (io_backend lmdb)
* ImageNetPairedDataset, whole-image LR (``fast_lr: false``, the official behaviour)
* ImageNetPairedDataset, LR of the crop only (``fast_lr: true``)

A training run needs (batch size x iterations/s) samples/s from its loader workers; divide by the number
of workers you can spare per GPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import cv2
import numpy as np
from basicsr.data import build_dataset

import sr_arch  # noqa: F401  (registers the datasets; before any basicsr import)
from sr_arch.data.prepare.bicubic import generate_bicubic
from sr_arch.data.prepare.common import list_images, read_image
from sr_arch.data.prepare.lmdb_store import build_lmdb
from sr_arch.data.prepare.meta_info import generate_meta_info
from sr_arch.data.prepare.subimages import extract_subimages
from sr_arch.demo import DEMO_HELDOUT_PHOTOS, DEMO_TRAIN_PHOTOS, load_photo

CROP, STEP = 480, 240


def build_data(root: str, scale: int) -> dict[str, str]:
    """Photos -> 480 px HR sub-images (+ LR sub-images, LMDBs, JPEG class folders, meta-info) under ``root``."""
    photos = os.path.join(root, 'photos')
    os.makedirs(photos, exist_ok=True)
    for name in DEMO_TRAIN_PHOTOS + DEMO_HELDOUT_PHOTOS:
        img = load_photo(name)
        if min(img.shape[:2]) >= CROP:
            cv2.imwrite(os.path.join(photos, f'{name}.png'), img)
    generate_bicubic(photos, os.path.join(root, f'LR_X{scale}'), [scale], hr_output=os.path.join(root, 'HR'))
    hr_sub, lr_sub = os.path.join(root, 'HR_sub'), os.path.join(root, f'X{scale}_sub')
    extract_subimages(os.path.join(root, 'HR'), hr_sub, CROP, STEP)
    extract_subimages(os.path.join(root, f'LR_X{scale}'), lr_sub, CROP, STEP, scale=scale)
    build_lmdb(hr_sub)
    build_lmdb(lr_sub)
    jpeg_root = os.path.join(root, 'ImageNet', 'GT')
    for i, rel in enumerate(list_images(hr_sub)):
        folder = os.path.join(jpeg_root, f'n{i % 4:08d}')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, rel.replace('.png', '.JPEG'))
        if not os.path.exists(path):
            cv2.imwrite(path, read_image(os.path.join(hr_sub, rel)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    meta = os.path.join(root, 'meta_info_ImageNet_GT.txt')
    generate_meta_info(jpeg_root, meta, min_size=CROP)
    return dict(hr_sub=hr_sub, lr_sub=lr_sub, hr_lmdb=hr_sub + '.lmdb', lr_lmdb=lr_sub + '.lmdb', jpeg_root=jpeg_root,
                meta=meta)


def dataset_options(data: dict[str, str], scale: int, gt_size: int) -> dict[str, dict[str, Any]]:
    common = dict(phase='train', scale=scale, gt_size=gt_size, use_hflip=True, use_rot=True)
    imagenet = dict(common, type='ImageNetPairedDataset', dataroot_gt=data['jpeg_root'], meta_info_file=data['meta'],
                    io_backend=dict(type='disk'))
    return {
        'PairedImageDataset, PNG folders': dict(common, type='PairedImageDataset', dataroot_gt=data['hr_sub'],
                                                dataroot_lq=data['lr_sub'], io_backend=dict(type='disk')),
        'PairedImageDataset, LMDB': dict(common, type='PairedImageDataset', dataroot_gt=data['hr_lmdb'],
                                         dataroot_lq=data['lr_lmdb'], io_backend=dict(type='lmdb')),
        'ImageNetPairedDataset, fast_lr: false (official)': dict(imagenet, fast_lr=False),
        'ImageNetPairedDataset, fast_lr: true': dict(imagenet, fast_lr=True),
    }


def time_samples(opt: dict[str, Any], samples: int, seed: int = 0) -> tuple[float, float]:
    """(samples/s of wall time, CPU ms per sample) of ``dataset[i]`` over ``samples`` random indices.

    The CPU time is what a loader worker spends per sample; unlike the wall time it hardly changes when
    other processes compete for the cores.
    """
    dataset = build_dataset(dict(opt, name='bench'))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(dataset), samples + 3)
    for i in indices[:3]:
        dataset[int(i)]
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in indices[3:]:
        dataset[int(i)]
    return samples / (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start) / samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4))
    parser.add_argument('--gt-size', type=int, default=256, help='GT patch (default 256: HAT x4)')
    parser.add_argument('--samples', type=int, default=200, help='timed samples per dataset (default 200)')
    parser.add_argument('--threads', type=int, default=1, help='torch / OpenCV threads (default 1, as a loader worker)')
    parser.add_argument('--workdir', default=None, help='keep the generated data here (default: a temporary folder)')
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    root = args.workdir or tempfile.mkdtemp(prefix='sr_arch_data_bench_')
    try:
        data = build_data(root, args.scale)
        count = len(list_images(data['hr_sub']))
        print(f'\n{count} HR sub-images of {CROP} px, x{args.scale}, gt_size {args.gt_size}, '
              f'{args.samples} samples, {args.threads} thread(s)\n')
        print('| dataset | samples/s (wall) | CPU ms / sample |')
        print('|---|---|---|')
        for label, opt in dataset_options(data, args.scale, args.gt_size).items():
            rate, cpu_ms = time_samples(opt, args.samples)
            print(f'| {label} | {rate:.1f} | {cpu_ms:.1f} |', flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
