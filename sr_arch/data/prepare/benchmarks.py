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

Each set is built in ``<dest>/<Set>.partial`` and renamed when complete. A set already laid out is
skipped, except for scales it lacks: ``--scales 2 3 4`` after ``--scales 2 4`` adds ``LR_bicubic/X3``
alone (from the set's ``HR``). When no set is found under ``--source`` the step fails and lists the
folders it saw there.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sr_arch.data.degradations import mod_crop
from sr_arch.data.prepare.bicubic import downsample
from sr_arch.data.prepare.common import (
    BadImages,
    CorruptImageError,
    PrepareError,
    StagedOutput,
    add_common_arguments,
    plural,
    positive_int,
    read_image,
    run_tasks,
    write_png,
)
from sr_arch.utils.files import is_image_file

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
    hr_dir: str  # where the HR is written ('' when the layout has it already)
    lr_files: tuple[tuple[int, str, str], ...]  # (scale, downloaded file or '', folder to write into)
    hr_mod: int
    regenerate: bool


def _layout_one(task: _Task) -> tuple[str, int, int, CorruptImageError | None]:
    """Write HR and every LR of one image; returns (stem, LR copied, LR generated, error)."""
    try:
        _, hr = choose_hr(task.hr_candidates)
        hr = mod_crop(hr, task.hr_mod)
        copied = generated = 0
        lr_images = []
        for s, path, folder in task.lr_files:
            lr = read_image(path) if path and not task.regenerate else None
            expected = (hr.shape[0] // s, hr.shape[1] // s)
            if lr is None or lr.shape[:2] != expected or lr.ndim != hr.ndim:
                lr = downsample(hr, s)
                generated += 1
            else:
                copied += 1
            lr_images.append((folder, lr))
    except CorruptImageError as err:
        return task.stem, 0, 0, err
    if task.hr_dir:
        write_png(os.path.join(task.hr_dir, f'{task.stem}.png'), hr)
    for folder, lr in lr_images:
        write_png(os.path.join(folder, f'{task.stem}.png'), lr)
    return task.stem, copied, generated, None


def _run_layout(name: str, stages: Sequence[StagedOutput], tasks: list[_Task], workers: int,
                result: BenchmarkResult) -> None:
    """Run ``tasks``, mark each image done in every stage, record the counts; fails when nothing was written."""
    try:
        for stem, copied, generated, error in run_tasks(_layout_one, tasks, workers, desc=name):
            if error is not None:
                result.bad.add(error)
                continue
            for stage in stages:
                stage.mark_done(stem, f'{copied},{generated}')
        counts = [tuple(map(int, info.split(','))) for info in stages[0].done.values()]
        if not counts:
            for stage in stages:
                stage.discard()
            raise PrepareError(f'{name}: nothing written, no image could be read ({result.bad.one_line()})')
        result.images[name] = len(counts)
        result.lr_copied[name] = sum(c for c, _ in counts)
        result.lr_generated[name] = sum(g for _, g in counts)
        for stage in stages:
            stage.commit()
    finally:
        for stage in stages:
            stage.close()


def _add_scales(name: str, out: str, set_dir: str | None, scales: Sequence[int], regenerate_lr: bool, workers: int,
                overwrite: bool, result: BenchmarkResult) -> None:
    """Build ``LR_bicubic/X{s}`` of an existing set for ``scales`` only, from the set's own ``HR`` (and the
    download's LR files when ``set_dir`` is known and their size fits)."""
    hr_dir = os.path.join(out, 'HR')
    stems = {_stem(f): os.path.join(hr_dir, f) for f in _images(hr_dir)} if os.path.isdir(hr_dir) else {}
    if not stems:
        raise PrepareError(f'{out} has no HR images: delete it, or pass --overwrite to rebuild it')
    downloaded = collect_candidates(set_dir, scales)[1] if set_dir else {s: {} for s in scales}
    stages = [StagedOutput(os.path.join(out, 'LR_bicubic', f'X{s}'),
                           dict(step='benchmarks', source=os.path.abspath(set_dir) if set_dir else None, scale=s,
                                regenerate_lr=regenerate_lr), overwrite).begin() for s in scales]
    print(f'{out} exists without {", ".join(f"X{s}" for s in scales)}: adding {"them" if len(scales) > 1 else "it"}')
    tasks = [_Task(stem, (path,), '', tuple((s, downloaded[s].get(stem, ''), stage.partial)
                                              for s, stage in zip(scales, stages)), 1, regenerate_lr)
             for stem, path in sorted(stems.items()) if not stages[0].is_done(stem)]
    _run_layout(name, stages, tasks, workers, result)


def folder_names(source: str, depth: int = 2, limit: int = 20) -> list[str]:
    """Sub-folder paths of ``source`` (relative, up to ``depth`` levels), for 'not found' messages."""
    found = []
    base = os.path.normpath(source)
    for root, dirs, _ in os.walk(base):
        level = os.path.relpath(root, base).count(os.sep) + (root != base)
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if level < depth else []
        found += [os.path.relpath(os.path.join(root, d), base) for d in dirs]
    return sorted(found)[:limit]


def prepare_benchmarks(source: str, dest: str = 'datasets/benchmark', scales: Sequence[int] = (2, 3, 4),
                       sets: Sequence[str] | None = None, hr_mod: int = 1, regenerate_lr: bool = False,
                       workers: int = 0, on_error: str = 'stop', overwrite: bool = False) -> BenchmarkResult:
    """Lay out the benchmark sets found under ``source`` into ``dest`` (see the module docstring).

    Args:
        sets: names from ``BENCHMARK_SETS``; None = every set found (a named set that is missing is an error).
        hr_mod: mod-crop the HR to this multiple (1: keep the original size).

    A set already laid out is skipped, except for the scales it lacks: those are added
    (``LR_bicubic/X{s}`` only, from its ``HR``).
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
        out = os.path.join(dest, name)
        staged = StagedOutput(out, dict(step='benchmarks', source=os.path.abspath(set_dir) if set_dir else None,
                                        scales=scales, hr_mod=hr_mod, regenerate_lr=regenerate_lr), overwrite)
        if staged.complete:
            missing = [s for s in scales if not os.path.isdir(os.path.join(out, 'LR_bicubic', f'X{s}'))]
            if missing:
                _add_scales(name, out, set_dir, missing, regenerate_lr, workers, overwrite, result)
            else:
                print(f'{out} already exists: skipped (pass --overwrite to rebuild it)')
                result.skipped_complete.append(out)
            continue
        if set_dir is None:
            if sets:
                raise PrepareError(f'{name} not found under {source} (looked for folders named '
                                   f'{", ".join(BENCHMARK_SETS[name])}, any case)')
            result.not_found.append(name)
            continue
        hr, lr = collect_candidates(set_dir, scales)
        if not hr:
            raise PrepareError(f'{set_dir}: no HR images found (looked in HR/, GT/, GTmod*/, image_SRF_*/ and the '
                               'folder itself)')
        staged.begin()
        lr_dirs = {s: os.path.join(staged.partial, 'LR_bicubic', f'X{s}') for s in scales}
        tasks = [_Task(stem, tuple(paths), os.path.join(staged.partial, 'HR'),
                       tuple((s, lr[s].get(stem, ''), lr_dirs[s]) for s in scales), hr_mod, regenerate_lr)
                 for stem, paths in sorted(hr.items()) if not staged.is_done(stem)]
        _run_layout(name, [staged], tasks, workers, result)
    if len(result.not_found) == len(BENCHMARK_SETS):
        names = folder_names(source)
        raise PrepareError(f'no benchmark set found under {source} (folders named '
                           f'{", ".join("/".join(a) for a in BENCHMARK_SETS.values())}, any case, up to '
                           f'{_MAX_SEARCH_DEPTH} levels down); folders found there: '
                           f'{", ".join(names) if names else "none"}')
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
        print(f'{os.path.join(result.dest, name)}: {plural(count, "image")}, LR: {result.lr_copied[name]} from the '
              f'download, {result.lr_generated[name]} generated')
    if result.not_found:
        print(f'not found under {args.source}: {", ".join(result.not_found)}')
    if result.bad.errors:
        print(result.bad.summary())
    return 0
