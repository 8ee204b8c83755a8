"""Training data that fails loudly and by name: unreadable, truncated or missing images and LMDB entries.

``RobustDataset`` wraps a basicsr-style dataset (one with ``io_backend_opt`` and a lazily created
``file_client``, as every basicsr and sr_arch image dataset has). It gives the dataset a recording file
client, so that when loading a sample fails the image at fault is named:

* a disk file that cannot be read or decoded: ``<path>: not a decodable image (corrupt or truncated, N bytes)``;
* an LMDB key that is absent: ``lmdb <db path>: key '<key>' not found``; a value that does not decode:
  ``lmdb <db path>, key '<key>': not a decodable image (corrupt or truncated, N bytes)``.

By default the error (``BadImageError``) stops training. With ``datasets.train.skip_bad_images: true``
the sample is replaced by the next readable one (``index + 1, index + 2, ...``: the same replacement on
every run), each skip is logged with its reason, and ``RobustDataset.skipped`` counts them across
dataloader workers.
"""
from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from sr_arch.errors import BadImageError, PairScaleError
from sr_arch.utils.sampling import DatasetWrapper

#: how many following samples are tried before a run with ``skip_bad_images`` gives up
MAX_REPLACEMENTS = 16


def _decodes(buffer: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(buffer, np.uint8), cv2.IMREAD_UNCHANGED) is not None


class RecordingFileClient:
    """basicsr's ``FileClient`` that names what it read: missing entries fail at once, and the buffers of
    the current sample are kept so that the one that does not decode can be named afterwards."""

    def __init__(self, io_backend_opt: dict[str, Any]) -> None:
        from basicsr.utils import FileClient

        options = dict(io_backend_opt)
        self.backend = options.pop('type', 'disk')
        self.db_paths = dict(zip(options.get('client_keys') or ['default'],
                                 self._as_list(options.get('db_paths'))))
        self.client = FileClient(self.backend, **options)
        self.fetched: list[tuple[str, bytes]] = []

    @staticmethod
    def _as_list(value: Any) -> list[Any]:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def where(self, filepath: str, client_key: str) -> str:
        if self.backend == 'lmdb':
            return f'lmdb {self.db_paths.get(client_key, client_key)}, key {filepath!r}'
        return str(filepath)

    def get(self, filepath: str, client_key: str = 'default') -> bytes:
        try:
            buffer = self.client.get(filepath, client_key)
        except OSError as err:
            raise BadImageError(f'{self.where(filepath, client_key)}: cannot be read ({err})') from err
        if buffer is None:  # basicsr's LMDB backend returns None for an absent key
            raise BadImageError(f'lmdb {self.db_paths.get(client_key, client_key)}: key {filepath!r} not found')
        self.fetched.append((self.where(filepath, client_key), buffer))
        return buffer

    def get_text(self, filepath: str) -> str:
        return self.client.get_text(filepath)

    def undecodable(self) -> str | None:
        """The first buffer of the current sample that is no image, described, or None."""
        for where, buffer in self.fetched:
            if not _decodes(buffer):
                return f'{where}: not a decodable image (corrupt or truncated, {len(buffer)} bytes)'
        return None


class RobustDataset(DatasetWrapper):
    """Wraps ``dataset`` (see the module docstring); ``name`` is the option block, e.g. ``datasets.train``."""

    def __init__(self, dataset: Dataset, skip_bad_images: bool = False, name: str = 'datasets.train') -> None:
        super().__init__(dataset)
        self.skip_bad_images = skip_bad_images
        self.name = name
        self._skipped = multiprocessing.Value('i', 0)  # shared with the dataloader workers
        self._reported = 0


    @property
    def skipped(self) -> int:
        """Samples replaced so far, over all worker processes."""
        return self._skipped.value

    def _client(self) -> RecordingFileClient | None:
        client = getattr(self.dataset, 'file_client', None)
        if isinstance(client, RecordingFileClient):
            return client
        backend = getattr(self.dataset, 'io_backend_opt', None)
        if client is not None or not isinstance(backend, dict) or 'type' not in backend:
            return None  # a dataset without basicsr's lazy file client: errors pass through unchanged
        self.dataset.file_client = RecordingFileClient(backend)
        return self.dataset.file_client

    def load(self, index: int) -> Any:
        """``dataset[index]``; a read/decode failure becomes a ``BadImageError`` naming the image."""
        client = self._client()
        if client is not None:
            client.fetched = []
        try:
            return self.dataset[index]
        except BadImageError:
            raise
        except ValueError as err:
            reason = ''.join(map(str, err.args))  # basicsr passes its message in two pieces
            if client is None or not reason.startswith('Scale mismatches'):
                raise
            files = ' and '.join(where for where, _ in client.fetched)  # GT first, then LQ, as basicsr reads them
            raise PairScaleError(f'{self.name}: {files}: {reason} Check {self.name}.dataroot_gt / dataroot_lq '
                                 'against scale') from None
        except Exception as err:
            reason = client.undecodable() if client is not None else None
            if reason is None and not isinstance(err, (OSError, cv2.error)):
                raise  # not an image problem: a bug or a bad option, keep the original error
            raise BadImageError(reason or f'{self.name}: sample {index} cannot be loaded '
                                f'({type(err).__name__}: {err})') from err

    def __getitem__(self, index: int) -> Any:
        if not self.skip_bad_images:
            try:
                return self.load(index)
            except BadImageError as err:
                raise BadImageError(f'{err} (set {self.name}.skip_bad_images: true to skip such images)') from None
        failures = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            try:
                return self.load((index + attempt) % len(self.dataset))
            except BadImageError as err:
                failures.append(str(err))
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logging.getLogger('basicsr').warning(f'skipped bad image: {err}')
        raise BadImageError(f'{self.name}: {len(failures)} bad images in a row from sample {index}, giving up; '
                            f'first: {failures[0]}')

    def new_skips_message(self) -> str | None:
        """``'skipped N bad image(s) so far'`` when the count grew since the last call, else None."""
        count = self.skipped
        if count == self._reported:
            return None
        self._reported = count
        return f'{self.name}: skipped {count} bad image(s) so far (skip_bad_images: true; reasons logged above)'


def find_robust_dataset(dataset: Any) -> RobustDataset | None:
    """The ``RobustDataset`` in a chain of wrappers (``SeededDataset(RobustDataset(...))``), or None."""
    while dataset is not None:
        if isinstance(dataset, RobustDataset):
            return dataset
        dataset = dataset.__dict__.get('dataset')
    return None
