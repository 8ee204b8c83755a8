"""``sr-arch prepare meta-info``: the meta-info file of an HR-only image folder (ImageNet-style).

One line per usable image, sorted, in basicsr's format: ``<path relative to the folder> (H,W,C)``,
e.g. ``n01440764/n01440764_10026.JPEG (250,250,3)``. HAT's ``ImageNetPairedDataset`` (and basicsr's
datasets) read the first token of each line as the path relative to ``dataroot_gt``.

Images are left out, and counted by reason, when they are smaller than ``--min-size`` on either side
(the GT patch: 128/192/256 for x2/x3/x4 in HAT's ImageNet recipes), unreadable or truncated (they
would stop a training run hours in), or have whitespace in their path (the format splits on spaces).
By default every image is fully decoded, which catches truncated files; ``--header-only`` reads only
the header (much faster, does not detect truncation).

Resumable: progress is appended to ``<output>.partial``; the final file is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field

from sr_arch.data.prepare.common import (
    CorruptImageError,
    PrepareError,
    add_common_arguments,
    image_shape,
    list_images,
    plural,
    read_image,
    run_tasks,
)
from sr_arch.utils.files import atomic_write_text

_SKIP_SMALL = 'smaller than --min-size'
_SKIP_UNREADABLE = 'unreadable'
_SKIP_WHITESPACE = 'whitespace in the path'


@dataclass
class MetaInfoResult:
    """What ``generate_meta_info`` did; ``skipped`` maps a reason to the paths left out for it."""

    output: str
    skipped_complete: bool = False
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def summary(self, limit: int = 5) -> str:
        total = sum(len(v) for v in self.skipped.values())
        lines = [f'{self.output}: {plural(self.kept, "image")} listed, {total} skipped']
        for reason, paths in sorted(self.skipped.items()):
            lines.append(f'  {len(paths)} {reason}: {", ".join(paths[:limit])}{" ..." if len(paths) > limit else ""}')
        return '\n'.join(lines)


@dataclass(frozen=True)
class _Task:
    root: str
    rel: str
    header_only: bool


def _probe(task: _Task) -> tuple[str, tuple[int, int, int] | None, str]:
    """(rel, shape or None, reason) of one image."""
    path = os.path.join(task.root, task.rel)
    if task.header_only:
        from PIL import Image

        try:
            with Image.open(path) as img:
                width, height = img.size
                channels = len(img.getbands())
        except (OSError, SyntaxError, ValueError) as err:
            return task.rel, None, f'{_SKIP_UNREADABLE}: {err}'
        return task.rel, (height, width, channels), ''
    try:
        img = read_image(path)
    except CorruptImageError as err:
        return task.rel, None, f'{_SKIP_UNREADABLE}: {err.reason}'
    return task.rel, image_shape(img), ''


def generate_meta_info(input_dir: str, output: str, min_size: int = 0, recursive: bool = True,
                       header_only: bool = False, workers: int = 0, on_error: str = 'skip',
                       overwrite: bool = False) -> MetaInfoResult:
    """Write the meta-info file ``output`` for the images of ``input_dir`` (see the module docstring).

    Args:
        min_size: images whose height or width is below this are left out (0: keep all sizes).
        on_error: 'skip' (default here: filtering is this step's job) or 'stop' at the first unreadable image.
    """
    result = MetaInfoResult(output=output)
    if os.path.exists(output) and not overwrite:
        print(f'{output} already exists: skipped (pass --overwrite to rebuild it)')
        result.skipped_complete = True
        return result
    images = list_images(input_dir, recursive)
    if not images:
        raise PrepareError(f'no images found in {input_dir}' + ('' if recursive else ' (not recursive)'))
    settings = json.dumps(dict(step='meta-info', input=os.path.abspath(input_dir), recursive=recursive,
                               header_only=header_only), sort_keys=True)
    partial = output + '.partial'
    records = _resume(partial, settings)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(partial, 'a', encoding='utf-8') as log:
        if records is None:
            log.write(settings + '\n')
            records = {}
        tasks = [_Task(input_dir, rel, header_only) for rel in images if rel not in records]
        for rel, shape, reason in run_tasks(_probe, tasks, workers, desc=f'meta-info {os.path.basename(output)}'):
            if reason and on_error == 'stop':
                raise CorruptImageError(os.path.join(input_dir, rel), reason.split(': ', 1)[-1])
            records[rel] = ','.join(map(str, shape)) if shape else f'!{reason}'
            log.write(f'{rel}\t{records[rel]}\n')
            log.flush()

    reasons: dict[str, list[str]] = {}
    lines = []
    for rel in images:
        info = records[rel]
        if info.startswith('!'):
            reason = info[1:]
        elif re.search(r'\s', rel):
            reason = _SKIP_WHITESPACE
        elif min(int(v) for v in info.split(',')[:2]) < min_size:
            reason = f'{_SKIP_SMALL} {min_size}'
        else:
            lines.append(f'{rel} ({info})\n')
            continue
        label, _, detail = reason.partition(': ')
        reasons.setdefault(label, []).append(f'{rel} ({detail})' if detail else rel)
    if not lines:
        raise PrepareError(f'{input_dir}: no image passed the checks ({_count_text(reasons)}); nothing written')
    atomic_write_text(output, ''.join(lines))
    os.remove(partial)
    result.kept = len(lines)
    result.skipped = reasons
    return result


def _count_text(reasons: dict[str, list[str]]) -> str:
    return ', '.join(f'{len(paths)} {reason}' for reason, paths in reasons.items())


def _resume(partial: str, settings: str) -> dict[str, str] | None:
    """Records of an interrupted run (rel -> 'H,W,C' or '!reason'), None if there is none; refuses a run
    with other settings."""
    if not os.path.exists(partial):
        return None
    with open(partial, encoding='utf-8') as f:
        text = f.read()
    lines = text.split('\n')
    complete, cut = lines[:-1], lines[-1]  # ``cut`` is a line a kill interrupted (or '')
    if not complete:
        os.remove(partial)
        return None
    if complete[0] != settings:
        raise PrepareError(f'{partial} is an interrupted run with other settings ({complete[0]}); delete it, or '
                           're-run with the original settings to finish it')
    if cut:
        with open(partial, 'w', encoding='utf-8') as f:
            f.write(''.join(line + '\n' for line in complete))
    return dict(line.split('\t', 1) for line in complete[1:])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', '-i', required=True, help='HR image folder, e.g. datasets/ImageNet/GT')
    parser.add_argument('--output', '-o', required=True,
                        help='meta-info file, e.g. datasets/meta_info/meta_info_ImageNet_GT.txt')
    parser.add_argument('--min-size', type=int, required=True,
                        help='leave out images smaller than this on either side: the GT patch size (gt_size: '
                             '128/192/256 for HAT x2/x3/x4); 0 keeps every size')
    parser.add_argument('--no-recursive', dest='recursive', action='store_false',
                        help='only the top folder (default: recursive, as ImageNet has one folder per class)')
    parser.add_argument('--header-only', action='store_true',
                        help='read image headers only: much faster, but truncated files are not detected')
    add_common_arguments(parser, on_error='skip')


def run(args: argparse.Namespace) -> int:
    result = generate_meta_info(args.input, args.output, args.min_size, args.recursive, args.header_only,
                                args.workers, args.on_error, args.overwrite)
    if not result.skipped_complete:
        print(result.summary())
    return 0
