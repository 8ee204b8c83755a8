"""``sr-arch prepare benchmarks``: lay out the five SR test sets as ``benchmark/<Set>/HR`` + ``LR_bicubic/X{s}``.

Recognised download layouts, anywhere below ``--source`` (folder names are matched case-insensitively;
B100 is also found as BSD100 / BSDS100):

* EDSR / RGT ``benchmark.tar``: ``Set5/HR/baby.png`` + ``Set5/LR_bicubic/X2/babyx2.png``;
* BasicSR / HAT: ``Set5/GTmod12/baby.png`` (or per-scale ``GTmod{s}``) + ``Set5/LRbicx2/baby.png``;
* SelfExSR (jbhuang0604): ``Set5/image_SRF_2/img_001_SRF_2_HR.png`` + ``..._SRF_2_LR.png``;
* a plain folder of HR images: ``Set14/*.bmp``, ``BSDS100/*.png``, ``urban100/*.png``, ``manga109/*.png``.

The output, with LR files named like the HR ones (``baby.png`` in ``HR`` and in ``LR_bicubic/X2``):

* ``HR`` is the largest HR the download has (the original where it exists; a per-scale mod-crop is a
  top-left crop of it), written as PNG, optionally mod-cropped with ``--hr-mod``. It is deliberately
  not cropped to one multiple by default: basicsr's ``PairedImageDataset`` crops the GT to LR size x s
  when testing, so every scale is then scored on ``GTmod{s}``, the protocol of the papers' tables.
* ``LR_bicubic/X{s}`` takes the downloaded LR when its size is (H//s, W//s) of that HR, and otherwise
  (missing, another crop, or ``--regenerate-lr``) generates it with MATLAB-compatible bicubic from the
  HR mod-cropped to ``s``.

Each set is built in ``<dest>/<Set>.partial`` and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sr_arch.data.prepare.bicubic import downsample
from sr_arch.data.prepare.common import (BadImages, CorruptImageError, PrepareError, StagedOutput, add_common_arguments,
                                         is_image_file, mod_crop, positive_int, read_image, run_tasks, write_png)

#: our folder name -> lower-case folder names of common downloads
BENCHMARK_SETS: dict[str, tuple[str, ...]] = {
    'Set5': ('set5',),
    'Set14': ('set14',),
    'B100': ('b100', 'bsd100', 'bsds100'),
    'Urban100': ('urban100',),
    'Manga109': ('manga109',),
}
_MAX_SEARCH_DEPTH = 4
_HR_FOLDERS = ('hr', 'gt', 'original', 'gtmod12')  # in priority order; other gtmod* follow


@dataclass
class BenchmarkResult:
    """Per set: number of images, LR files taken from the download and LR files generated."""

    dest: str
    images: dict[str, int] = field(default_factory=dict)
    lr_copied: dict[str, int] = field(default_factory=dict)
    lr_generated: dict[str, int] = field(default_factory=dict)
    skipped_complete: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    bad: BadImages = field(default_factory=BadImages)


def find_set_folder(source: str, aliases: Sequence[str]) -> str | None:
    """The shallowest folder under ``source`` (itself included) whose name is one of ``aliases``."""
    source = os.path.normpath(source)
    base_depth = source.count(os.sep)
    for root, dirs, _ in os.walk(source):
        depth = root.count(os.sep) - base_depth
        if os.path.basename(root).lower() in aliases:
            return root
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if depth < _MAX_SEARCH_DEPTH else []
        for name in dirs:
            if name.lower() in aliases:
                return os.path.join(root, name)
    return None


def _images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith('.') and is_image_file(f)
                  and os.path.isfile(os.path.join(folder, f)))


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _selfexsr_stem(name: str, scale: int, kind: str) -> str | None:
    """'img_001_SRF_2_HR.png' -> 'img_001' for (2, 'HR'); None for other files."""
    match = re.fullmatch(rf'(.+)_SRF_{scale}_{kind}\.\w+', name)
    return match.group(1) if match else None


def collect_candidates(set_dir: str, scales: Sequence[int]) -> tuple[dict[str, list[str]], dict[int, dict[str, str]]]:
    """HR candidate files per image (priority order) and downloaded LR files per scale and image."""
    hr: dict[str, list[str]] = {}
    lr: dict[int, dict[str, str]] = {s: {} for s in scales}
    subdirs = {d.lower(): os.path.join(set_dir, d) for d in sorted(os.listdir(set_dir))
               if os.path.isdir(os.path.join(set_dir, d))}

    def add_hr(folder: str, rename=_stem) -> None:
        for name in _images(folder):
            stem = rename(name)
            if stem is not None:
                hr.setdefault(stem, []).append(os.path.join(folder, name))

    hr_dirs = [subdirs[d] for d in _HR_FOLDERS if d in subdirs]
    hr_dirs += [path for d, path in sorted(subdirs.items()) if d.startswith('gtmod') and d not in _HR_FOLDERS]
    for folder in hr_dirs:
        add_hr(folder)
    add_hr(set_dir)  # plain layout
    for d, folder in sorted(subdirs.items()):
        match = re.fullmatch(r'image_srf_(\d+)', d)
        if match:  # SelfExSR: img_001_SRF_2_HR.png / img_001_SRF_2_LR.png
            s = int(match.group(1))
            add_hr(folder, lambda name, s=s: _selfexsr_stem(name, s, 'HR'))
            if s in lr:
                for name in _images(folder):
                    stem = _selfexsr_stem(name, s, 'LR')
                    if stem:
                        lr[s][stem] = os.path.join(folder, name)
    lr_bicubic = {d.lower(): os.path.join(subdirs['lr_bicubic'], d) for d in os.listdir(subdirs['lr_bicubic'])
                  } if 'lr_bicubic' in subdirs else {}
    for s in scales:
        for folder in (lr_bicubic.get(f'x{s}'), subdirs.get(f'lrbicx{s}'), subdirs.get(f'lr_bicubic_x{s}')):
            if folder and os.path.isdir(folder):
                for name in _images(folder):
                    lr[s].setdefault(re.sub(rf'x{s}$', '', _stem(name)), os.path.join(folder, name))
    return hr, lr


def choose_hr(candidates: Sequence[str]) -> tuple[str, np.ndarray]:
    """The candidate that contains all others (they are top-left crops of one original)."""
    images = [(path, read_image(path)) for path in candidates]
    height = max(img.shape[0] for _, img in images)
    width = max(img.shape[1] for _, img in images)
    for path, img in images:
        if img.shape[:2] == (height, width):
            return path, img
    raise PrepareError(f'no HR version contains the others: {", ".join(candidates)} '
                       f'({", ".join(str(img.shape[:2]) for _, img in images)})')


@dataclass(frozen=True)
class _Task:
    stem: str
    hr_candidates: tuple[str, ...]
    lr_files: tuple[tuple[int, str], ...]  # (scale, downloaded file or '')
    out_dir: str
    hr_mod: int
    regenerate: bool


def _layout_one(task: _Task) -> tuple[str, int, int, CorruptImageError | None]:
    """Write HR and every LR of one image; returns (stem, LR copied, LR generated, error)."""
    try:
        _, hr = choose_hr(task.hr_candidates)
        hr = mod_crop(hr, task.hr_mod)
        copied = generated = 0
        lr_images = {}
        for s, path in task.lr_files:
            lr = read_image(path) if path and not task.regenerate else None
            expected = (hr.shape[0] // s, hr.shape[1] // s)
            if lr is None or lr.shape[:2] != expected or lr.ndim != hr.ndim:
                lr = downsample(hr, s)
                generated += 1
            else:
                copied += 1
            lr_images[s] = lr
    except CorruptImageError as err:
        return task.stem, 0, 0, err
    write_png(os.path.join(task.out_dir, 'HR', f'{task.stem}.png'), hr)
    for s, lr in lr_images.items():
        write_png(os.path.join(task.out_dir, 'LR_bicubic', f'X{s}', f'{task.stem}.png'), lr)
    return task.stem, copied, generated, None


def prepare_benchmarks(source: str, dest: str = 'datasets/benchmark', scales: Sequence[int] = (2, 3, 4),
                       sets: Sequence[str] | None = None, hr_mod: int = 1, regenerate_lr: bool = False,
                       workers: int = 0, on_error: str = 'stop', overwrite: bool = False) -> BenchmarkResult:
    """Lay out the benchmark sets found under ``source`` into ``dest`` (see the module docstring).

    Args:
        sets: names from ``BENCHMARK_SETS``; None = every set found (a named set that is missing is an error).
        hr_mod: mod-crop the HR to this multiple (1: keep the original size).
    """
    if not os.path.isdir(source):
        raise PrepareError(f'--source folder not found: {source}')
    scales = sorted({int(s) for s in scales})
    unknown = [s for s in (sets or []) if s not in BENCHMARK_SETS]
    if unknown:
        raise PrepareError(f'--sets: unknown set(s) {unknown}; known: {list(BENCHMARK_SETS)}')
    result = BenchmarkResult(dest=dest, bad=BadImages(on_error))
    for name in sets or BENCHMARK_SETS:
        set_dir = find_set_folder(source, BENCHMARK_SETS[name])
        if set_dir is None:
            if sets:
                raise PrepareError(f'{name} not found under {source} (looked for folders named '
                                   f'{", ".join(BENCHMARK_SETS[name])}, any case)')
            result.not_found.append(name)
            continue
        out = os.path.join(dest, name)
        staged = StagedOutput(out, dict(step='benchmarks', source=os.path.abspath(set_dir), scales=scales,
                                        hr_mod=hr_mod, regenerate_lr=regenerate_lr), overwrite)
        if staged.complete:
            print(f'{out} already exists: skipped (pass --overwrite to rebuild it)')
            result.skipped_complete.append(out)
            continue
        hr, lr = collect_candidates(set_dir, scales)
        if not hr:
            raise PrepareError(f'{set_dir}: no HR images found (looked in HR/, GT/, GTmod*/, image_SRF_*/ and the '
                               'folder itself)')
        staged.begin()
        try:
            tasks = [_Task(stem, tuple(paths), tuple((s, lr[s].get(stem, '')) for s in scales), staged.partial,
                           hr_mod, regenerate_lr) for stem, paths in sorted(hr.items()) if not staged.is_done(stem)]
            for stem, copied, generated, error in run_tasks(_layout_one, tasks, workers, desc=name):
                if error is not None:
                    result.bad.add(error)
                    continue
                staged.mark_done(stem, f'{copied},{generated}')
            counts = [tuple(map(int, info.split(','))) for info in staged.done.values()]
            result.images[name] = len(counts)
            result.lr_copied[name] = sum(c for c, _ in counts)
            result.lr_generated[name] = sum(g for _, g in counts)
            staged.commit()
        finally:
            staged.close()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--source', '-s', required=True, help='folder holding the downloaded / extracted sets')
    parser.add_argument('--dest', '-d', default='datasets/benchmark', help='output root (default datasets/benchmark)')
    parser.add_argument('--scales', type=positive_int, nargs='+', default=[2, 3, 4], help='scales (default: 2 3 4)')
    parser.add_argument('--sets', nargs='+', choices=list(BENCHMARK_SETS), default=None,
                        help='sets to lay out (default: every one found)')
    parser.add_argument('--hr-mod', type=positive_int, default=1,
                        help='mod-crop HR to this multiple, e.g. 12 for BasicSR\'s GTmod12 (default 1: original '
                             'size; the dataset crops GT to LRxs, i.e. GTmod{s}, at test time)')
    parser.add_argument('--regenerate-lr', action='store_true',
                        help='always generate LR with MATLAB bicubic instead of using downloaded LR files')
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    result = prepare_benchmarks(args.source, args.dest, args.scales, args.sets, args.hr_mod, args.regenerate_lr,
                                args.workers, args.on_error, args.overwrite)
    for name, count in result.images.items():
        print(f'{os.path.join(result.dest, name)}: {count} images, LR x{"/x".join(map(str, args.scales))}: '
              f'{result.lr_copied[name]} from the download, {result.lr_generated[name]} generated')
    if result.not_found:
        print(f'not found under {args.source}: {", ".join(result.not_found)}')
    if result.bad.errors:
        print(result.bad.summary())
    return 0
