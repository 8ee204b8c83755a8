"""Files: the image extensions the package reads, and the one atomic writer every output goes through.

``atomic_write`` writes to a hidden temporary file in the destination folder (``.<name>.<random>.tmp``) and
renames it over the destination, so a crash or a kill never leaves a truncated file under the final name;
files get the permissions a plain ``open`` would give (the process umask), not ``mkstemp``'s 0600.
"""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

#: file name endings (lower case) treated as images when scanning a folder
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')

#: suffix of the hidden temporary files ``atomic_write`` creates (an interrupted write may leave one)
TEMP_SUFFIX = '.tmp'


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[BinaryIO], object], sync: bool = False) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    Args:
        path: destination; its folder is created if needed.
        write: writes the content into the open binary file it is given.
        sync: fsync before the rename (checkpoints: the content survives a power loss too).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))
