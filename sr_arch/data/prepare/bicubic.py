"""``sr-arch prepare bicubic``: bicubic LR images, MATLAB-compatible, for one or more scales.

For every HR image and scale ``s``: mod-crop to a multiple of ``s`` (top-left, MATLAB's ``modcrop``),
then ``imresize(hr, 1/s)`` with basicsr's MATLAB-compatible bicubic (antialiased), rounded to the
input's bit depth. Outputs are PNG named like the HR file (``--suffix 'x{s}'`` gives DIV2K's
``0001x2.png``). ``--hr-output`` also writes the mod-cropped HR (the ``GTmod{s}`` of benchmark sets);
without it, HR images whose sides are not multiples of a scale are named in a warning, since training
pairs need GT = LR x scale exactly. A run that writes nothing fails and leaves nothing behind.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sr_arch.data.degradations import mod_crop
from sr_arch.data.prepare.common import (
    BadImages,
    CorruptImageError,
    PrepareError,
    StagedOutput,
    add_common_arguments,
    bicubic_resize,
    format_path_template,
    images_by_stem,
    plural,
    positive_int,
    read_image,
    run_tasks,
    write_png,
)


@dataclass
class BicubicResult:
    """What ``generate_bicubic`` did; ``outputs`` maps each scale to its LR folder."""

    outputs: dict[int, str]
    written: dict[str, int] = field(default_factory=dict)
    skipped_complete: list[str] = field(default_factory=list)
    #: scale -> HR images (path, HxW) whose sides are not multiples of it (their LR pairs with a crop)
    not_multiples: dict[int, list[str]] = field(default_factory=dict)
    bad: BadImages = field(default_factory=BadImages)


def downsample(hr: np.ndarray, scale: int) -> np.ndarray:
    """(H, W[, C]) uint8/uint16 HR -> (H//s, W//s[, C]) LR of the mod-cropped HR (MATLAB bicubic)."""
    return bicubic_resize(mod_crop(hr, scale), 1.0 / scale)


@dataclass(frozen=True)
class _Task:
    path: str
    name: str
    # (scale, folder to write into, LR name suffix, folder for the mod-cropped HR or '')
    targets: tuple[tuple[int, str, str, str], ...]
    compression_level: int


def _downsample_one(task: _Task) -> tuple[str, str, CorruptImageError | None]:
    """Write the LR (and mod-cropped HR) of one image; returns (name, 'height width' of the HR, error)."""
    try:
        hr = read_image(task.path)
    except CorruptImageError as err:
        return task.name, '', err
    for scale, lr_dir, suffix, hr_dir in task.targets:
        if lr_dir:
            write_png(os.path.join(lr_dir, f'{task.name}{suffix}.png'), downsample(hr, scale), task.compression_level)
        if hr_dir:
            write_png(os.path.join(hr_dir, f'{task.name}.png'), mod_crop(hr, scale), task.compression_level)
    return task.name, f'{hr.shape[0]} {hr.shape[1]}', None


def generate_bicubic(input_dir: str, output: str, scales: Sequence[int] = (2, 3, 4), suffix: str = '',
                     hr_output: str | None = None, recursive: bool = False, compression_level: int = 3,
                     workers: int = 0, on_error: str = 'stop', overwrite: bool = False) -> BicubicResult:
    """Write bicubic LR images of every image in ``input_dir`` (see the module docstring).

    Args:
        output: LR folder; with several scales it must contain ``{s}`` (e.g. ``DF2K_bicx{s}``).
        suffix: appended to the LR file names, ``{s}`` allowed (``'x{s}'`` -> ``0001x2.png``); default none.
        hr_output: optional folder (``{s}`` allowed) for the mod-cropped HR images.
    """
    scales = sorted({int(s) for s in scales})
    if not scales or min(scales) < 2:
        raise PrepareError(f'--scales must be integers >= 2, got {scales}')
    for option, template in (('--output', output), ('--hr-output', hr_output)):
        if template and len(scales) > 1 and '{s}' not in template:
            raise PrepareError(f'{option} {template!r} needs the placeholder {{s}} when several scales are given '
                               f'({scales}), e.g. {template}_x{{s}}')
    names = images_by_stem(input_dir, recursive)

    result = BicubicResult(outputs={s: format_path_template(output, s, '--output') for s in scales},
                           bad=BadImages(on_error))
    # one staged folder per output; an image is done for a folder once its file there is written
    staged: dict[tuple[int, str], StagedOutput] = {}
    for s in scales:
        folders = [('lr', result.outputs[s])]
        if hr_output:
            folders.append(('hr', format_path_template(hr_output, s, '--hr-output')))
        for kind, folder in folders:
            stage = StagedOutput(folder, dict(step='bicubic', kind=kind, input=os.path.abspath(input_dir), scale=s,
                                              suffix=suffix if kind == 'lr' else '', recursive=recursive,
                                              compression_level=compression_level), overwrite)
            if stage.complete:
                print(f'{folder} already exists: skipped (pass --overwrite to rebuild it)')
                result.skipped_complete.append(folder)
            else:
                staged[(s, kind)] = stage.begin()
    try:
        tasks = []
        for name, rel in sorted(names.items()):
            targets = []
            for s in scales:
                lr_stage, hr_stage = staged.get((s, 'lr')), staged.get((s, 'hr'))
                lr_dir = lr_stage.partial if lr_stage and not lr_stage.is_done(name) else ''
                hr_dir = hr_stage.partial if hr_stage and not hr_stage.is_done(name) else ''
                if lr_dir or hr_dir:
                    targets.append((s, lr_dir, format_path_template(suffix, s, '--suffix'), hr_dir))
            if targets:
                tasks.append(_Task(os.path.join(input_dir, rel), name, tuple(targets), compression_level))
        scales_text = '/'.join(f'x{s}' for s in scales)
        for name, size, error in run_tasks(_downsample_one, tasks, workers, desc=f'bicubic {scales_text}'):
            if error is not None:
                result.bad.add(error)
                continue
            for stage in staged.values():
                if not stage.is_done(name):
                    stage.mark_done(name, size)
        if staged and not any(stage.done for stage in staged.values()):
            for stage in staged.values():
                stage.discard()
            raise PrepareError(f'nothing written: no image of {input_dir} could be read ({result.bad.one_line()})')
        for (s, kind), stage in staged.items():
            if kind == 'lr' and not hr_output:
                for name, size in sorted(stage.done.items()):
                    height, width = (int(v) for v in size.split()) if size else (0, 0)
                    if height % s or width % s:
                        result.not_multiples.setdefault(s, []).append(f'{names[name]} ({height}x{width})')
        for stage in staged.values():
            result.written[stage.final] = len(stage.done)
            stage.commit()
    finally:
        for stage in staged.values():
            stage.close()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', '-i', required=True, help='HR image folder')
    parser.add_argument('--output', '-o', required=True,
                        help="LR folder; '{s}' is replaced by the scale, e.g. datasets/DF2K/DF2K_bicx{s}")
    parser.add_argument('--scales', type=positive_int, nargs='+', default=[2, 3, 4], help='scales (default: 2 3 4)')
    parser.add_argument('--suffix', default='',
                        help="appended to LR file names, '{s}' allowed: 'x{s}' gives DIV2K's 0001x2.png "
                             '(default: none, LR named like the HR)')
    parser.add_argument('--hr-output', default=None,
                        help="also write the HR mod-cropped to the scale here ('{s}' allowed), e.g. GTmod{s}")
    parser.add_argument('--recursive', action='store_true', help='include sub-folders (their layout is kept)')
    parser.add_argument('--compression-level', type=int, default=3, choices=range(10), metavar='0-9',
                        help='PNG compression level (default 3)')
    add_common_arguments(parser)


def not_multiples_warning(not_multiples: dict[int, list[str]], input_dir: str) -> str:
    """The warning printed for ``BicubicResult.not_multiples``."""
    lines = []
    for s, found in sorted(not_multiples.items()):
        lines.append(f'warning: {plural(len(found), "HR image")} of {input_dir} {"is" if len(found) == 1 else "are"} '
                     f'not a multiple of {s} (e.g. {", ".join(found[:3])}): their x{s} LR is made from the HR cropped '
                     f'to a multiple of {s}, and training on the uncropped HR fails (basicsr needs GT = LR x {s}); '
                     "pass --hr-output 'HR_X{s}' to write the cropped HR and train on it, or use subimages --align 12")
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    result = generate_bicubic(args.input, args.output, args.scales, args.suffix, args.hr_output, args.recursive,
                              args.compression_level, args.workers, args.on_error, args.overwrite)
    for folder, count in result.written.items():
        print(f'{folder}: {plural(count, "image")}')
    if result.not_multiples:
        print(not_multiples_warning(result.not_multiples, args.input))
    if result.bad.errors:
        print(result.bad.summary())
    return 0
