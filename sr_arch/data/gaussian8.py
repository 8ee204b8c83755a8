"""Gaussian8 blind-SR test sets (IKC/DAN "setting 1", LabNet's evaluation) and their averaging.

``sr-arch prepare gaussian8`` (or ``python scripts/generate_gaussian8.py``) reads
``<input>/<Set>/HR`` for Set5, Set14, B100, Urban100 and Manga109 and writes, per scale:

    <output>/<Set>/X{s}/HR/<name>.png              the HR, mod-cropped to a multiple of s
    <output>/<Set>/X{s}/sig{sigma:.2f}/<name>.png  LR: 21x21 Gaussian blur (reflect padding),
                                                   MATLAB bicubic /s, 8-bit

for the eight widths of the scale (x2 linspace(0.8, 1.6, 8), x3 linspace(1.35, 2.40, 8),
x4 linspace(1.8, 3.2, 8)). Every file is written atomically (temporary file + rename) and existing
files are skipped, so an interrupted run resumes where it stopped; ``--overwrite`` regenerates.

The published numbers are the mean over the eight widths. The test option files list one dataset per
set and width, named ``<Set>_sig<sigma:.2f>``; ``average_over_widths`` turns those per-width results
into per-set averages.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sr_arch.data.blind_sr_dataset import degrade, gaussian_kernel, mod_crop

#: (first, last) of the eight kernel widths per scale
GAUSSIAN8_RANGES = {2: (0.8, 1.6), 3: (1.35, 2.40), 4: (1.8, 3.2)}
NUM_WIDTHS = 8
KERNEL_SIZE = 21
BENCHMARK_SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')
IMAGE_EXTENSIONS = ('.png', '.bmp', '.jpg', '.jpeg', '.tif', '.tiff', '.ppm')

_DATASET_NAME = re.compile(r'^(?P<set>.+)_sig(?P<sigma>\d+(?:\.\d+)?)$')


def gaussian8_sigmas(scale: int) -> list[float]:
    """The eight kernel widths of ``scale`` (2, 3 or 4)."""
    if scale not in GAUSSIAN8_RANGES:
        raise ValueError(f'Gaussian8 is defined for scales {sorted(GAUSSIAN8_RANGES)}, got {scale!r}')
    first, last = GAUSSIAN8_RANGES[scale]
    return [float(s) for s in np.linspace(first, last, NUM_WIDTHS)]


def width_tag(sigma: float) -> str:
    """Folder / dataset-name suffix of a width: ``sig1.80``."""
    return f'sig{sigma:.2f}'


def dataset_name(set_name: str, sigma: float) -> str:
    """Name of one per-width test dataset in our option files: ``Set5_sig1.80``."""
    return f'{set_name}_{width_tag(sigma)}'


def average_over_widths(results: Mapping[str, Mapping[str, float]],
                        require_widths: int | None = NUM_WIDTHS) -> dict[str, dict[str, float]]:
    """Per-set means over the kernel widths of per-width results.

    Args:
        results: ``{dataset_name: {metric: value}}`` as in the test pipeline's results JSON, e.g.
            ``{'Set5_sig1.80': {'psnr': 31.2, 'ssim': 0.88}, 'Set5_sig2.00': {...}, ...}``. Names of the
            form ``<Set>_sig<sigma>`` are grouped by ``<Set>``; any other entry is copied unchanged.
        require_widths: number of widths each set must have (8 for Gaussian8); None accepts any count.

    Returns:
        ``{set_name: {metric: mean over its widths}}``, sets in order of first appearance.

    Raises:
        ValueError: a set has a different number of widths than ``require_widths`` (a partial run
            would otherwise be reported as a Gaussian8 average), or its widths disagree on the metrics,
            or a value is not a number.
    """
    grouped: 'OrderedDict[str, list[tuple[str, Mapping[str, float]]]]' = OrderedDict()
    passthrough: dict[str, dict[str, float]] = {}
    for name, metrics in results.items():
        match = _DATASET_NAME.match(name)
        if match is None:
            passthrough[name] = dict(metrics)
            continue
        grouped.setdefault(match['set'], []).append((name, metrics))

    averages: dict[str, dict[str, float]] = {}
    for set_name, entries in grouped.items():
        if require_widths is not None and len(entries) != require_widths:
            raise ValueError(f'average_over_widths: {set_name} has {len(entries)} kernel widths '
                             f'({[name for name, _ in entries]}), expected {require_widths}')
        metric_names = list(entries[0][1])
        for name, metrics in entries:
            if set(metrics) != set(metric_names):
                raise ValueError(f'average_over_widths: {name} has metrics {sorted(metrics)}, '
                                 f'but {entries[0][0]} has {sorted(metric_names)}')
            for metric, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                    raise ValueError(f'average_over_widths: {name}.{metric} is not a number: {value!r}')
        averages[set_name] = {m: float(np.mean([metrics[m] for _, metrics in entries])) for m in metric_names}
    for name, metrics in passthrough.items():
        averages.setdefault(name, metrics)
    return averages


def _atomic_write_png(path: str, img_bgr: np.ndarray) -> None:
    ok, encoded = cv2.imencode('.png', img_bgr)
    if not ok:
        raise OSError(f'could not encode {path}')
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix='.png')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(encoded.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _list_images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) quantised float -> (H, W, 3) uint8."""
    return np.round(img.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def generate_set(hr_folder: str, out_folder: str, scale: int, overwrite: bool = False) -> tuple[int, int]:
    """Write the mod-cropped HR and the eight LR widths of one set at one scale.

    Returns:
        (files written, files skipped because they already existed)
    """
    sigmas = gaussian8_sigmas(scale)
    kernels = {sigma: gaussian_kernel(KERNEL_SIZE, sigma) for sigma in sigmas}
    folders = {None: os.path.join(out_folder, 'HR')}
    folders.update({sigma: os.path.join(out_folder, width_tag(sigma)) for sigma in sigmas})
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    names = _list_images(hr_folder)
    if not names:
        raise FileNotFoundError(f'no images in {hr_folder}')
    written = skipped = 0
    label = f'{os.path.basename(os.path.dirname(os.path.normpath(out_folder)))} x{scale}'
    for name in tqdm(names, desc=label, unit='image', leave=False, file=sys.stderr):
        out_name = os.path.splitext(name)[0] + '.png'
        targets = {key: os.path.join(folder, out_name) for key, folder in folders.items()}
        todo = [key for key, path in targets.items() if overwrite or not os.path.isfile(path)]
        skipped += len(targets) - len(todo)
        if not todo:
            continue
        src = os.path.join(hr_folder, name)
        hr = cv2.imread(src, cv2.IMREAD_COLOR)
        if hr is None:
            raise OSError(f'cannot read image {src}')
        hr = mod_crop(hr, scale)
        if min(hr.shape[:2]) < scale:
            raise ValueError(f'image {src} ({hr.shape[0]}x{hr.shape[1]}) is smaller than scale {scale}')
        hr_tensor = torch.from_numpy(hr.astype(np.float32) / 255.0).permute(2, 0, 1)  # BGR; blur is per channel
        for key in todo:
            if key is None:
                _atomic_write_png(targets[key], hr)
            else:
                _atomic_write_png(targets[key], _to_uint8(degrade(hr_tensor, kernels[key], scale)))
            written += 1
    return written, skipped


def generate_gaussian8(input_root: str, output_root: str, scales: Iterable[int] = (2, 3, 4),
                       sets: Sequence[str] | None = None, overwrite: bool = False,
                       log: Callable[[str], Any] = print) -> dict[tuple[str, int], tuple[int, int]]:
    """Generate Gaussian8 for ``sets`` (default: those of BENCHMARK_SETS present under ``input_root``).

    Returns:
        {(set, scale): (written, skipped)}
    """
    scales = list(scales)
    for scale in scales:
        gaussian8_sigmas(scale)  # validates the scale before any work
    if sets is None:
        sets = [s for s in BENCHMARK_SETS if os.path.isdir(os.path.join(input_root, s, 'HR'))]
        missing = [s for s in BENCHMARK_SETS if s not in sets]
        if not sets:
            raise FileNotFoundError(f'none of {list(BENCHMARK_SETS)} found as {input_root}/<Set>/HR')
        if missing:
            log(f'skipping sets not found under {input_root}: {missing}')
    else:
        absent = [os.path.join(input_root, s, 'HR') for s in sets
                  if not os.path.isdir(os.path.join(input_root, s, 'HR'))]
        if absent:
            raise FileNotFoundError(f'HR folder(s) not found: {absent}')
    summary = {}
    for set_name in sets:
        for scale in scales:
            out_folder = os.path.join(output_root, set_name, f'X{scale}')
            written, skipped = generate_set(os.path.join(input_root, set_name, 'HR'), out_folder, scale, overwrite)
            summary[(set_name, scale)] = (written, skipped)
            log(f'{set_name} x{scale}: {written} files written, {skipped} already there -> {out_folder}')
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='sr-arch prepare gaussian8',
        description='Write the Gaussian8 blind-SR test sets (8 Gaussian blur widths per scale, bicubic, 8-bit).')
    parser.add_argument('--input', default='datasets/benchmark', help='folder holding <Set>/HR (default: %(default)s)')
    parser.add_argument('--output', default='datasets/benchmark_gaussian8', help='output root (default: %(default)s)')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], choices=sorted(GAUSSIAN8_RANGES))
    parser.add_argument('--sets', nargs='+', default=None,
                        help=f'sets to generate (default: those of {" ".join(BENCHMARK_SETS)} that exist)')
    parser.add_argument('--overwrite', action='store_true', help='regenerate files that already exist')
    args = parser.parse_args(argv)
    try:
        generate_gaussian8(args.input, args.output, args.scales, args.sets, args.overwrite)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f'sr-arch prepare gaussian8: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
