"""``sr-arch prepare lmdb`` and ``sr-arch prepare verify``: LMDB image databases in basicsr's layout.

Layout (``basicsr.utils.lmdb_util``, read by basicsr's ``lmdb`` io backend)::

    DF2K_HR_sub.lmdb/
        data.mdb, lock.mdb     key = image path relative to the folder, without extension ('0001_s001');
                               value = PNG bytes (compression level 1 by default), like make_lmdb_from_imgs
        meta_info.txt          one line per image: '0001_s001.png (480,480,3) 1'

Unlike ``make_lmdb_from_imgs`` the database is built in ``<name>.lmdb.partial`` and renamed when
complete; a re-run after an interruption keeps every committed transaction and adds the rest.
``meta_info.txt`` is written last, in sorted key order. The map size grows on demand.

``verify`` checks a database against its source folder: every image has its key, its meta-info line and
its shape, decodes, and equals the file pixel for pixel; keys without a source file are reported too.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field

import lmdb
import numpy as np
from tqdm import tqdm

from sr_arch.data.prepare.common import (
    BadImages,
    CorruptImageError,
    PrepareError,
    StagedOutput,
    add_common_arguments,
    decode_image,
    encode_png,
    image_shape,
    list_images,
    plural,
    read_image,
    run_tasks,
)

META_INFO = 'meta_info.txt'
_COMMIT_BYTES = 64 << 20
_COMMIT_IMAGES = 2000
_INITIAL_MAP_SIZE = 1 << 30


@dataclass
class LmdbResult:
    """What ``build_lmdb`` did."""

    output: str
    skipped_complete: bool = False
    images: int = 0
    bad: BadImages = field(default_factory=BadImages)


def lmdb_keys(input_dir: str, recursive: bool = False) -> dict[str, str]:
    """key -> relative path for every image of ``input_dir``; refuses names basicsr would mis-parse."""
    keys: dict[str, str] = {}
    for rel in list_images(input_dir, recursive):
        key = os.path.splitext(rel)[0]
        if not key.isascii() or re.search(r'[\s.]', key):
            # basicsr reads the key back as meta_info line.split('.')[0] and splits lines on spaces
            raise PrepareError(f'{os.path.join(input_dir, rel)}: LMDB keys must be ASCII without spaces or dots '
                               f'(basicsr parses meta_info.txt that way); rename the file')
        if key in keys:
            raise PrepareError(f'{input_dir}: {keys[key]} and {rel} would share the LMDB key {key!r}')
        keys[key] = rel
    return keys


def default_lmdb_path(input_dir: str) -> str:
    return os.path.normpath(input_dir) + '.lmdb'


@dataclass(frozen=True)
class _Task:
    key: str
    path: str
    compress_level: int


def _encode_one(task: _Task) -> tuple[str, bytes, tuple[int, int, int], CorruptImageError | None]:
    try:
        img = read_image(task.path)
    except CorruptImageError as err:
        return task.key, b'', (0, 0, 0), err
    return task.key, encode_png(img, task.compress_level), image_shape(img), None


class _Writer:
    """Batches puts into transactions and grows the map when it is full."""

    def __init__(self, path: str, map_size: int):
        self.env = lmdb.open(path, map_size=map_size, subdir=True, meminit=False, map_async=True)
        self.pending: list[tuple[str, bytes]] = []
        self.pending_bytes = 0

    def add(self, key: str, value: bytes) -> bool:
        """Queue one record; True when the batch is big enough to ``flush``."""
        self.pending.append((key, value))
        self.pending_bytes += len(value)
        return self.pending_bytes >= _COMMIT_BYTES or len(self.pending) >= _COMMIT_IMAGES

    def flush(self) -> list[str]:
        """Commit the queued records in one transaction; returns their keys."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key.encode('ascii'), value)
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()['map_size'] * 2)
        keys = [key for key, _ in self.pending]
        self.pending, self.pending_bytes = [], 0
        return keys

    def close(self) -> None:
        self.env.sync()
        self.env.close()


def build_lmdb(input_dir: str, output: str | None = None, recursive: bool = False, compress_level: int = 1,
               workers: int = 0, on_error: str = 'stop', overwrite: bool = False) -> LmdbResult:
    """Store every image of ``input_dir`` in the LMDB ``output`` (default ``<input_dir>.lmdb``)."""
    output = output or default_lmdb_path(input_dir)
    if not output.endswith('.lmdb'):
        raise PrepareError(f'--output {output}: basicsr only reads LMDB folders whose name ends with .lmdb')
    result = LmdbResult(output=output, bad=BadImages(on_error))
    staged = StagedOutput(output, dict(step='lmdb', input=os.path.abspath(input_dir), recursive=recursive,
                                       compress_level=compress_level), overwrite)
    if staged.complete:
        print(f'{output} already exists: skipped (pass --overwrite to rebuild it)')
        result.skipped_complete = True
        return result
    keys = lmdb_keys(input_dir, recursive)
    if not keys:
        raise PrepareError(f'no images found in {input_dir}')

    staged.begin()
    source_bytes = sum(os.path.getsize(os.path.join(input_dir, rel)) for rel in keys.values())
    writer = _Writer(staged.partial, max(_INITIAL_MAP_SIZE, 4 * source_bytes))
    try:
        shapes = {}
        tasks = [_Task(key, os.path.join(input_dir, rel), compress_level)
                 for key, rel in keys.items() if not staged.is_done(key)]

        def flush() -> None:
            for done_key in writer.flush():
                staged.mark_done(done_key, shapes.pop(done_key))

        for key, data, shape, error in run_tasks(_encode_one, tasks, workers, desc=f'lmdb {os.path.basename(output)}'):
            if error is not None:
                result.bad.add(error)
                continue
            shapes[key] = ','.join(map(str, shape))
            if writer.add(key, data):
                flush()
        flush()
        if not staged.done:
            writer.close()
            writer = None
            staged.discard()
            raise PrepareError(f'nothing written: no image of {input_dir} could be read ({result.bad.one_line()})')
        meta = ''.join(f'{key}.png ({shape}) {compress_level}\n' for key, shape in sorted(staged.done.items()))
        with open(os.path.join(staged.partial, META_INFO), 'w') as f:
            f.write(meta)
        result.images = len(staged.done)
        writer.close()
        writer = None
        staged.commit()
    finally:
        if writer is not None:
            writer.close()
        staged.close()
    return result


# ----------------------------------------------------------------------------------------------------
# verification


@dataclass
class VerifyReport:
    """Outcome of ``verify_lmdb``: ``problems`` is empty when the database matches its folder."""

    lmdb_path: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_meta_info(lmdb_path: str) -> dict[str, tuple[int, int, int]]:
    """key -> (H, W, C) from ``<lmdb>/meta_info.txt``."""
    path = os.path.join(lmdb_path, META_INFO)
    if not os.path.isfile(path):
        raise PrepareError(f'{lmdb_path} has no {META_INFO}; it is not an LMDB in basicsr layout')
    meta = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            match = re.fullmatch(r'(\S+)\.\w+ \((\d+),(\d+),(\d+)\)(?: \d+)?\s*', line)
            if not match:
                raise PrepareError(f'{path}:{number}: expected "<key>.png (H,W,C) <level>", got {line.strip()!r}')
            meta[match.group(1)] = tuple(int(v) for v in match.group(2, 3, 4))
    return meta


def verify_lmdb(lmdb_path: str, input_dir: str, recursive: bool = False) -> VerifyReport:
    """Check ``lmdb_path`` against ``input_dir`` image by image (see the module docstring)."""
    report = VerifyReport(lmdb_path)
    if not os.path.isdir(lmdb_path):
        raise PrepareError(f'LMDB not found: {lmdb_path}')
    meta = read_meta_info(lmdb_path)
    keys = lmdb_keys(input_dir, recursive)
    env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            stored = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(values=False)}
            for key, rel in tqdm(sorted(keys.items()), desc=f'verify {os.path.basename(lmdb_path)}', unit='img',
                                 dynamic_ncols=True, mininterval=0.5):
                report.checked += 1
                path = os.path.join(input_dir, rel)
                value = txn.get(key.encode('ascii'))
                if value is None:
                    report.problems.append(f'{path}: key {key!r} missing from the database')
                    continue
                if key not in meta:
                    report.problems.append(f'{path}: key {key!r} missing from {META_INFO}')
                try:
                    expected = read_image(path)
                except CorruptImageError as err:
                    report.problems.append(f'{err} (source image)')
                    continue
                try:
                    actual = decode_image(value, f'{lmdb_path}[{key}]')
                except CorruptImageError as err:
                    report.problems.append(str(err))
                    continue
                if key in meta and meta[key] != image_shape(actual):
                    report.problems.append(f'{path}: {META_INFO} says {meta[key]}, stored image is '
                                           f'{image_shape(actual)}')
                if actual.shape != expected.shape:
                    report.problems.append(f'{path}: stored image is {image_shape(actual)}, the file is '
                                           f'{image_shape(expected)}')
                elif not np.array_equal(actual, expected):
                    report.problems.append(f'{path}: stored pixels differ from the file')
    finally:
        env.close()
    for key in sorted((stored | set(meta)) - set(keys)):
        report.problems.append(f'{lmdb_path}: key {key!r} has no image in {input_dir}')
    return report


# ----------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', '-i', nargs='+', required=True, help='image folder(s), one LMDB each')
    parser.add_argument('--output', '-o', nargs='+', default=None,
                        help='LMDB path(s) ending in .lmdb, one per input (default: <input>.lmdb)')
    parser.add_argument('--recursive', action='store_true', help='include sub-folders (keys keep the sub-path)')
    parser.add_argument('--compress-level', type=int, default=1, choices=range(10), metavar='0-9',
                        help='PNG compression level of the stored images (default 1, as basicsr)')
    parser.add_argument('--verify', action='store_true', help='verify every database against its folder afterwards')
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    outputs = args.output or [default_lmdb_path(p) for p in args.input]
    if len(outputs) != len(args.input):
        raise PrepareError(f'--output gives {len(outputs)} path(s) for {len(args.input)} --input folder(s)')
    status = 0
    for input_dir, output in zip(args.input, outputs):
        result = build_lmdb(input_dir, output, args.recursive, args.compress_level, args.workers, args.on_error,
                            args.overwrite)
        if not result.skipped_complete:
            print(f'{output}: {plural(result.images, "image")}')
        if result.bad.errors:
            print(result.bad.summary())
        if args.verify:
            status = max(status, _print_report(verify_lmdb(output, input_dir, args.recursive)))
    return status


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--lmdb', required=True, help='the LMDB folder (…/name.lmdb)')
    parser.add_argument('--input', '-i', required=True, help='the image folder it was built from')
    parser.add_argument('--recursive', action='store_true', help='the LMDB was built with --recursive')


def run_verify(args: argparse.Namespace) -> int:
    return _print_report(verify_lmdb(args.lmdb, args.input, args.recursive))


def _print_report(report: VerifyReport, limit: int = 20) -> int:
    if report.ok:
        print(f'{report.lmdb_path}: OK, {plural(report.checked, "image")} match their files')
        return 0
    print(f'{report.lmdb_path}: {plural(len(report.problems), "problem")} in {plural(report.checked, "image")}:')
    for problem in report.problems[:limit]:
        print(f'  {problem}')
    if len(report.problems) > limit:
        print(f'  ... and {len(report.problems) - limit} more')
    return 1
