"""What every preparation step shares: safe image reading, atomic writes, staged (resumable) outputs,
bad-image policy, worker pools with progress bars, and the command-line options common to all steps.

Resumability contract of a step that writes a folder (or an LMDB):

1. If ``<output>`` exists, it is complete (it only ever appears through a rename): the step skips it,
   unless ``--overwrite``.
2. Otherwise outputs are written inside ``<output>.partial``; every file through a temporary file and
   ``os.replace``, so no file is ever half-written under its final name.
3. ``<output>.partial/.prepare.json`` records the step's settings; resuming with different settings is
   refused. ``.prepare.done`` lists the finished source images; a re-run skips them.
4. When everything is written, both bookkeeping files are removed and ``<output>.partial`` is renamed to
   ``<output>``.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from sr_arch.errors import CorruptImageError, PrepareError
from sr_arch.utils.files import TEMP_SUFFIX, atomic_write_bytes, atomic_write_text, is_image_file

ON_ERROR_CHOICES = ('stop', 'skip')
PARTIAL_SUFFIX = '.partial'
SETTINGS_FILE = '.prepare.json'
DONE_FILE = '.prepare.done'


# ----------------------------------------------------------------------------------------------------
# reading and writing images


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 image``, ``2 images`` (``plural_form`` for irregular nouns)."""
    return f'{count} {noun if count == 1 else plural_form or noun + "s"}'


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """Image files of ``folder`` as sorted paths relative to it ('/'-separated); hidden files are ignored."""
    if not os.path.isdir(folder):
        raise PrepareError(f'input folder not found: {folder}')
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
        rel_root = os.path.relpath(root, folder)
        for name in files:
            if not name.startswith('.') and is_image_file(name):
                found.append(name if rel_root == '.' else f'{rel_root}/{name}'.replace(os.sep, '/'))
    return sorted(found)


def images_by_stem(folder: str, recursive: bool = False) -> dict[str, str]:
    """Output name (relative path without extension) -> image file relative to ``folder``, sorted by name.

    Raises:
        PrepareError: the folder has no image, or two files would give the same output name (``a.png`` and
            ``a.jpg``).
    """
    names: dict[str, str] = {}
    for rel in list_images(folder, recursive):
        name = os.path.splitext(rel)[0]
        if name in names:
            raise PrepareError(f'{folder}: {names[name]} and {rel} would both give {name}.png')
        names[name] = rel
    if not names:
        raise PrepareError(f'no images found in {folder}')
    return names


def _jpeg_is_complete(data: bytes) -> bool:
    """False for a JPEG stream cut short (some OpenCV builds decode those silently as grey)."""
    if data.rstrip(b'\x00\r\n ')[-2:] == b'\xff\xd9':
        return True
    from PIL import Image  # slow path only for files without an end marker (trailing bytes or truncation)

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def decode_image(data: bytes, path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode image bytes with OpenCV; raises ``CorruptImageError`` naming ``path`` when it cannot.

    Returns:
        (H, W) or (H, W, C) array, BGR(A) channel order, uint8 or uint16.
    """
    if not data:
        raise CorruptImageError(path, 'empty file')
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise CorruptImageError(path, 'cannot be decoded (corrupt, truncated or not an image)')
    if data[:2] == b'\xff\xd8' and not _jpeg_is_complete(data):
        raise CorruptImageError(path, 'truncated JPEG')
    if img.dtype not in (np.uint8, np.uint16):
        raise CorruptImageError(path, f'unsupported pixel type {img.dtype} (8- and 16-bit images only)')
    return img


def read_image(path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read and decode one image file (see ``decode_image``)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise CorruptImageError(path, f'cannot be read ({err.strerror or err})') from err
    return decode_image(data, path, flags)


def encode_png(img: np.ndarray, compression_level: int = 3) -> bytes:
    """PNG bytes of an (H, W[, C]) uint8/uint16 image (``compression_level`` 0-9, as cv2's)."""
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, int(compression_level)])
    if not ok:
        raise PrepareError(f'PNG encoding failed for an image of shape {img.shape}, dtype {img.dtype}')
    return buf.tobytes()


def write_png(path: str, img: np.ndarray, compression_level: int = 3) -> None:
    atomic_write_bytes(path, encode_png(img, compression_level))


def bicubic_resize(img: np.ndarray, factor: float) -> np.ndarray:
    """MATLAB ``imresize(img, factor, 'bicubic')`` (antialiased) via basicsr, on uint8/uint16 images.

    Args:
        img: (H, W) or (H, W, C) uint8 or uint16.
    Returns:
        (ceil(H*factor), ceil(W*factor)[, C]) of the same dtype, rounded and clipped.
    """
    from basicsr.utils.matlab_functions import imresize

    peak = float(np.iinfo(img.dtype).max)
    out = imresize(img.astype(np.float32) / peak, factor)
    return np.clip(np.round(out * peak), 0, peak).astype(img.dtype)


def image_shape(img: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) with C = 1 for a 2-D image, as basicsr's meta-info files write it."""
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])


# ----------------------------------------------------------------------------------------------------
# bad images


@dataclass
class BadImages:
    """Collects unreadable images under ``--on-error skip``; raises at the first one under ``stop``."""

    policy: str = 'stop'
    errors: list[CorruptImageError] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ON_ERROR_CHOICES:
            raise PrepareError(f'--on-error must be one of {ON_ERROR_CHOICES}, got {self.policy!r}')

    def add(self, error: CorruptImageError) -> None:
        if self.policy == 'stop':
            raise CorruptImageError(error.path, f'{error.reason} (pass --on-error skip to skip and count such '
                                    'images instead)')
        self.errors.append(error)

    def one_line(self, limit: int = 3) -> str:
        """``skipped N unreadable image(s): <path>: <reason>; ...`` on one line (for error messages)."""
        shown = '; '.join(str(err) for err in self.errors[:limit])
        more = f'; ... and {len(self.errors) - limit} more' if len(self.errors) > limit else ''
        return f'skipped {len(self.errors)} unreadable image(s): {shown}{more}' if self.errors else ''

    def summary(self, limit: int = 10) -> str:
        if not self.errors:
            return ''
        lines = [f'skipped {len(self.errors)} unreadable image(s):']
        lines += [f'  {err}' for err in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f'  ... and {len(self.errors) - limit} more')
        return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------
# staged outputs


def clean_temp_files(folder: str) -> None:
    """Remove the hidden temporary files an interrupted ``atomic_write_bytes`` may have left."""
    for name in os.listdir(folder):
        if name.startswith('.') and name.endswith(TEMP_SUFFIX):
            os.remove(os.path.join(folder, name))


class StagedOutput:
    """One output folder built under ``<final>.partial`` and renamed to ``<final>`` when complete.

    Args:
        final: the output folder's final path.
        settings: the step's parameters (JSON-serialisable); a partial folder started with other
            settings is refused rather than mixed.
        overwrite: rebuild even if ``final`` exists (the old one is replaced only at commit).
    """

    def __init__(self, final: str, settings: dict[str, Any], overwrite: bool = False):
        self.final = os.path.normpath(final)
        self.partial = self.final + PARTIAL_SUFFIX
        self.settings = settings
        self.overwrite = overwrite
        self._done: dict[str, str] = {}
        self._done_file = None

    @property
    def complete(self) -> bool:
        """True when the final output exists and is not to be rebuilt: the step skips it."""
        return os.path.exists(self.final) and not self.overwrite

    def begin(self) -> 'StagedOutput':
        """Create or resume ``<final>.partial``; returns self."""
        os.makedirs(self.partial, exist_ok=True)
        settings_path = os.path.join(self.partial, SETTINGS_FILE)
        wanted = json.loads(json.dumps(self.settings))  # normalise tuples to lists
        if os.path.exists(settings_path):
            with open(settings_path) as f:
                previous = json.load(f)
            if previous != wanted:
                changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
                detail = ', '.join(f'{k}: {previous.get(k)!r} -> {wanted.get(k)!r}' for k in changed)
                raise PrepareError(f'{self.partial} is an interrupted run with other settings ({detail}); '
                                   'delete it, or re-run with the original settings to finish it')
        else:
            atomic_write_text(settings_path, json.dumps(wanted, indent=1, sort_keys=True))
        clean_temp_files(self.partial)
        self._done = self._read_done()
        self._done_file = open(os.path.join(self.partial, DONE_FILE), 'a', encoding='utf-8')
        return self

    def _read_done(self) -> dict[str, str]:
        path = os.path.join(self.partial, DONE_FILE)
        if not os.path.exists(path):
            return {}
        with open(path, encoding='utf-8') as f:
            text = f.read()
        lines = text.split('\n')[:-1]  # a last line without newline was cut by a kill: not done
        if not text.endswith('\n') and text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(''.join(line + '\n' for line in lines))
        done = {}
        for line in lines:
            key, _, info = line.partition('\t')
            done[key] = info
        return done

    def is_done(self, key: str) -> bool:
        return key in self._done

    @property
    def done(self) -> dict[str, str]:
        """key -> info of every finished item (resumed ones included)."""
        return dict(self._done)

    def mark_done(self, key: str, info: str = '') -> None:
        """Record one finished item (after its files were written)."""
        if '\n' in key or '\t' in key:
            raise PrepareError(f'file names with tabs or newlines are not supported: {key!r}')
        self._done[key] = info
        self._done_file.write(f'{key}\t{info}\n')
        self._done_file.flush()

    def discard(self) -> None:
        """Delete ``<final>.partial`` (a run that produced nothing): nothing is marked complete, and the next
        run starts afresh, with any settings."""
        self.close()
        if os.path.isdir(self.partial):
            shutil.rmtree(self.partial)

    def close(self) -> None:
        if self._done_file is not None:
            self._done_file.close()
            self._done_file = None

    def commit(self) -> None:
        """Remove the bookkeeping files and move the finished folder to its final name."""
        self.close()
        for name in (SETTINGS_FILE, DONE_FILE):
            path = os.path.join(self.partial, name)
            if os.path.exists(path):
                os.remove(path)
        clean_temp_files(self.partial)
        if os.path.exists(self.final):
            old = self.final + '.old'
            if os.path.exists(old):
                shutil.rmtree(old)
            os.rename(self.final, old)
            os.rename(self.partial, self.final)
            shutil.rmtree(old)
        else:
            os.rename(self.partial, self.final)


# ----------------------------------------------------------------------------------------------------
# parallel work with a progress bar


def _init_worker() -> None:
    # One thread per worker: N workers already use the N cores (torch runs basicsr's imresize).
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run_tasks(func: Callable[[Any], Any], tasks: Sequence[Any], workers: int = 0, desc: str = '',
              unit: str = 'img') -> Iterator[Any]:
    """Yield ``func(task)`` for every task (completion order when ``workers`` > 1), with a tqdm bar.

    ``func`` must be a module-level function; it should return errors rather than raise them so that
    the caller decides (``BadImages``). ``workers`` <= 1 runs in this process.
    """
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
    try:
        if workers > 1 and len(tasks) > 1:
            # spawn, not fork: a child forked after the parent used torch's OpenMP pool can deadlock
            context = multiprocessing.get_context('spawn')
            with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
                for result in pool.imap_unordered(func, tasks, chunksize=1):
                    bar.update(1)
                    yield result
        else:
            for task in tasks:
                result = func(task)
                bar.update(1)
                yield result
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------
# command line


def add_common_arguments(parser: argparse.ArgumentParser, on_error: str = 'stop', workers: bool = True) -> None:
    """``--on-error``, ``--overwrite`` and (optionally) ``--workers``, identical in every step."""
    parser.add_argument('--on-error', choices=ON_ERROR_CHOICES, default=on_error,
                        help=f'what to do with an unreadable / corrupt / truncated image: stop with its path, '
                             f'or skip it and report the count at the end (default: {on_error})')
    parser.add_argument('--overwrite', action='store_true',
                        help='rebuild outputs that already exist (the old output is replaced only when the new '
                             'one is complete)')
    if workers:
        parser.add_argument('--workers', type=int, default=0,
                            help='worker processes (default 0: work in this process)')


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def format_path_template(template: str, scale: int, option: str) -> str:
    """``template`` with ``{s}`` replaced by ``scale`` (``--output 'X{s}_sub'``); names the option on error."""
    try:
        return template.format(s=scale)
    except (KeyError, IndexError, ValueError) as err:
        raise PrepareError(f'{option} {template!r}: only the placeholder {{s}} (the scale) is allowed') from err
