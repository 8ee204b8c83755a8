"""``sr-arch prepare gaussian8``: the Gaussian8 blurred LR test sets (IKC/DAN "setting 1", LabNet's tables).

Reads ``<input>/<Set>/HR`` (the layout of ``prepare benchmarks``) for Set5, Set14, B100, Urban100 and
Manga109 and writes, per set and scale:

    <output>/<Set>/X{s}/HR/<name>.png              the HR (8-bit), mod-cropped to a multiple of s
    <output>/<Set>/X{s}/sig{sigma:.2f}/<name>.png  LR: 21x21 Gaussian blur (reflect padding),
                                                   MATLAB bicubic /s, 8-bit

for the eight widths of the scale (``sr_arch.data.gaussian8``), degraded by the same code as
``BlindSRDataset`` (``sr_arch.data.degradations``). Each ``X{s}`` folder is built as ``X{s}.partial``
and renamed when complete, like every prepare step: an interrupted run resumes image by image, a
finished folder is skipped (``--overwrite`` rebuilds it), a run that writes nothing fails.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch

from sr_arch.data.degradations import degrade, gaussian_kernel, mod_crop
from sr_arch.data.gaussian8 import BENCHMARK_SETS, GAUSSIAN8_RANGES, KERNEL_SIZE, gaussian8_sigmas, width_tag
from sr_arch.data.prepare.common import (
    BadImages,
    CorruptImageError,
    PrepareError,
    StagedOutput,
    add_common_arguments,
    images_by_stem,
    plural,
    read_image,
    run_tasks,
    write_png,
)


@dataclass
class Gaussian8Result:
    """What ``generate_gaussian8`` did: images per written ``X{s}`` folder, folders skipped as complete,
    sets not found (when none were named)."""

    written: dict[str, int] = field(default_factory=dict)
    skipped_complete: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    bad: BadImages = field(default_factory=BadImages)


@dataclass(frozen=True)
class _Task:
    path: str
    name: str
    scale: int
    out_dir: str


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float on 8-bit levels -> (H, W, 3) uint8."""
    return np.round(img.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def _degrade_one(task: _Task) -> tuple[str, CorruptImageError | None]:
    """Write the mod-cropped HR and its eight LRs of one image; returns (name, error)."""
    try:
        hr = read_image(task.path, cv2.IMREAD_COLOR)  # 8-bit BGR whatever the file holds
    except CorruptImageError as err:
        return task.name, err
    hr = mod_crop(hr, task.scale)
    if min(hr.shape[:2]) == 0:
        raise PrepareError(f'{task.path} is smaller than the scale {task.scale}')
    hr_tensor = torch.from_numpy(hr.astype(np.float32) / 255.0).permute(2, 0, 1)  # BGR: the blur is per channel
    write_png(os.path.join(task.out_dir, 'HR', f'{task.name}.png'), hr)
    for sigma in gaussian8_sigmas(task.scale):
        lr = degrade(hr_tensor, gaussian_kernel(KERNEL_SIZE, sigma), task.scale)
        write_png(os.path.join(task.out_dir, width_tag(sigma), f'{task.name}.png'), _to_uint8(lr))
    return task.name, None


def _sources(hr_folder: str) -> dict[str, str]:
    """Output name -> HR file of one set; two files giving the same name are refused."""
    return {name: os.path.join(hr_folder, rel) for name, rel in images_by_stem(hr_folder).items()}


def generate_gaussian8(input_root: str, output_root: str, scales: Sequence[int] = (2, 3, 4),
                       sets: Sequence[str] | None = None, workers: int = 0, on_error: str = 'stop',
                       overwrite: bool = False) -> Gaussian8Result:
    """Write Gaussian8 for ``sets`` (default: those of ``BENCHMARK_SETS`` found as ``<input_root>/<Set>/HR``)."""
    scales = sorted({int(s) for s in scales})
    for scale in scales:
        if scale not in GAUSSIAN8_RANGES:
            raise PrepareError(f'--scales: Gaussian8 is defined for x{"/x".join(map(str, GAUSSIAN8_RANGES))}, '
                               f'got {scale}')
    found = [s for s in BENCHMARK_SETS if os.path.isdir(os.path.join(input_root, s, 'HR'))]
    result = Gaussian8Result(bad=BadImages(on_error))
    if sets:
        absent = [os.path.join(input_root, s, 'HR') for s in sets if s not in found]
        if absent:
            raise PrepareError(f'HR folder(s) not found: {", ".join(absent)} (make them with prepare benchmarks)')
    elif not found:
        present = sorted(d for d in os.listdir(input_root) if os.path.isdir(os.path.join(input_root, d))
                         ) if os.path.isdir(input_root) else []
        raise PrepareError(f'none of {", ".join(BENCHMARK_SETS)} found as {input_root}/<Set>/HR (make them with '
                           f'prepare benchmarks); folders there: {", ".join(present) if present else "none"}')
    else:
        result.not_found = [s for s in BENCHMARK_SETS if s not in found]
    for set_name in sets or found:
        hr_folder = os.path.join(input_root, set_name, 'HR')
        for scale in scales:
            out = os.path.join(output_root, set_name, f'X{scale}')
            staged = StagedOutput(out, dict(step='gaussian8', input=os.path.abspath(hr_folder), scale=scale,
                                            kernel_size=KERNEL_SIZE, sigmas=gaussian8_sigmas(scale)), overwrite)
            if staged.complete:
                print(f'{out} already exists: skipped (pass --overwrite to rebuild it)')
                result.skipped_complete.append(out)
                continue
            sources = _sources(hr_folder)
            staged.begin()
            try:
                tasks = [_Task(path, name, scale, staged.partial) for name, path in sorted(sources.items())
                         if not staged.is_done(name)]
                for name, error in run_tasks(_degrade_one, tasks, workers, desc=f'gaussian8 {set_name} x{scale}'):
                    if error is not None:
                        result.bad.add(error)
                        continue
                    staged.mark_done(name)
                if not staged.done:
                    staged.discard()
                    raise PrepareError(f'{out}: nothing written, no image of {hr_folder} could be read '
                                       f'({result.bad.one_line()})')
                result.written[out] = len(staged.done)
                staged.commit()
            finally:
                staged.close()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', '-i', default='datasets/benchmark',
                        help='folder holding <Set>/HR, as prepare benchmarks writes it (default: %(default)s)')
    parser.add_argument('--output', '-o', default='datasets/benchmark_gaussian8',
                        help='output root (default: %(default)s)')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], choices=sorted(GAUSSIAN8_RANGES),
                        help='scales (default: 2 3 4)')
    parser.add_argument('--sets', nargs='+', choices=BENCHMARK_SETS, default=None,
                        help=f'sets to write (default: those of {" ".join(BENCHMARK_SETS)} found under --input)')
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    result = generate_gaussian8(args.input, args.output, args.scales, args.sets, args.workers, args.on_error,
                                args.overwrite)
    for out, count in result.written.items():
        print(f'{out}: {plural(count, "image")}, HR + 8 blur widths')
    if result.not_found:
        print(f'not found under {args.input}: {", ".join(result.not_found)}')
    if result.bad.errors:
        print(result.bad.summary())
    return 0
