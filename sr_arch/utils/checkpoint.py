"""Safe checkpoint reading and atomic writing.

* ``load_checkpoint``: ``torch.load(weights_only=True)`` (or safetensors); a file that needs arbitrary
  pickle code is refused with a message naming the file, never executed; a file that is no checkpoint at
  all is named for what it is (an image, a text or HTML file, an archive, a truncated download).
  A ``.safetensors`` file written by ``save_safetensors`` comes back as
  ``{'params': tensors, 'network_kwargs': ...}`` (its metadata).
* ``extract_state_dict``: finds the network weights in any layout users have: basicsr's
  ``{'params_ema': ..., 'params': ...}``, a raw state_dict, ``{'state_dict': ...}``/``{'model': ...}``,
  with or without DataParallel's ``module.`` prefix.
* ``atomic_save``: write to a temporary file in the same folder, fsync, then rename, so a kill while
  saving never leaves a truncated file under the final name; ``save_safetensors`` does the same for a
  state_dict in the safetensors format, with the ``network_kwargs`` (constructor arguments no shape tells) and
  other strings in its metadata.
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import torch

from sr_arch.errors import CheckpointError
from sr_arch.utils.files import atomic_write

#: leading bytes -> what a file that is not a checkpoint is
_SIGNATURES = ((b'\x89PNG\r\n\x1a\n', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
               (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'), (b'BM', 'a BMP image'),
               (b'\x1f\x8b', 'a gzip archive (unpack it first)'), (b'7z\xbc\xaf', 'a 7-Zip archive (unpack it first)'),
               (b'Rar!', 'a RAR archive (unpack it first)'), (b'%PDF', 'a PDF document'))
_UNSAFE_ADVICE = 'weights_only'  # torch's messages suggest weights_only=False: never passed on


def describe_file(head: bytes, size: int) -> str | None:
    """What a file is, from its first bytes, when it is obviously not a checkpoint; None otherwise.

    Args:
        head: the first bytes of the file (512 are plenty).
        size: its size in bytes.
    """
    if size == 0:
        return 'an empty file (0 bytes)'
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'a WebP image'
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if len(head) > 262 and head[257:262] == b'ustar':
        return 'a tar archive (unpack it first)'
    if head[:4] == b'PK\x03\x04' or head[:1] == b'\x80':
        return None  # a zip (torch's format) or a pickle: torch.load decides
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        try:
            text = head[:-3].decode('utf-8')  # a multi-byte character cut by the 512-byte window
        except UnicodeDecodeError:
            return None
    if '\x00' in text:
        return None
    start = text.lstrip().lower()
    if start.startswith(('<!doctype html', '<html')):
        return 'an HTML page (a failed download? fetch the file itself)'
    if start.startswith(('version https://git-lfs', 'version https://hawser')):
        return 'a Git LFS pointer (run git lfs pull to get the file)'
    first = ' '.join(text.split())[:40]
    return f'a text file ({size} bytes, starting {first!r})'


def _torch_reason(err: BaseException) -> str:
    """The useful part of a torch.load error, without torch's advice to load unsafely."""
    text = str(err)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and _UNSAFE_ADVICE not in line]
    reason = lines[0] if lines else type(err).__name__
    return reason.split(' was not an allowed global')[0].split('. This is an internal miniz error')[0]


def load_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> Any:
    """Read a ``.pth``/``.pt``/``.ckpt`` (weights only) or ``.safetensors`` file.

    Raises:
        CheckpointError: one line naming the file and what it really is (an image, a text or HTML file,
            an archive, truncated or damaged), or, for a pickle that needs Python objects beyond tensors,
            which object; a file needing arbitrary pickle code is never loaded.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(512)
    kind = describe_file(head, size)
    if kind is not None:
        raise CheckpointError(f'{path}: not a checkpoint, it is {kind}')
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)
    try:
        with warnings.catch_warnings():  # a plain pickle of another protocol: refused below, no extra warning
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _torch_reason(err)
        if reason.startswith('Unsupported global') or head[:1] == b'\x80':  # a pickle beyond tensors
            raise CheckpointError(
                f'{path}: refused to load; the file needs arbitrary pickle code, which could run anything '
                f'({reason.replace("GLOBAL ", "")}). Re-save only its tensors, e.g. '
                "torch.save({'params': model.state_dict()}, path), from an environment you trust.") from None
        raise CheckpointError(f'{path}: not a PyTorch checkpoint ({size} bytes that are not a tensor pickle: '
                              f'{reason})') from None
    except Exception as err:  # noqa: BLE001  (torch raises RuntimeError, EOFError, KeyError... on damaged files)
        if head[:4] == b'PK\x03\x04':
            raise CheckpointError(f'{path}: truncated or damaged checkpoint ({size} bytes; {_torch_reason(err)}); '
                                  'download or copy it again') from None
        raise CheckpointError(f'{path}: not a readable checkpoint ({size} bytes; {type(err).__name__}: '
                              f'{_torch_reason(err)})') from None


#: safetensors metadata key holding the JSON of the network's stored constructor arguments
SAFETENSORS_KWARGS_KEY = 'network_kwargs'


def _load_safetensors(path: str, map_location: str | torch.device) -> Any:
    """Tensors of a ``.safetensors`` file; with ``network_kwargs`` metadata, ``{'params': ..., key: kwargs}``."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as err:
        raise CheckpointError(f'{path}: reading .safetensors needs the safetensors package '
                              '(pip install safetensors)') from err

    from sr_arch.archs.spec import NETWORK_KWARGS_KEY

    try:
        tensors = load_file(path, device=str(map_location))
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(f'{path}: not a readable .safetensors file ({os.path.getsize(path)} bytes; '
                              f'{" ".join(str(err).split())[:200]})') from None
    if SAFETENSORS_KWARGS_KEY not in metadata:
        return tensors
    try:
        kwargs = json.loads(metadata[SAFETENSORS_KWARGS_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f'{path}: metadata {SAFETENSORS_KWARGS_KEY!r} is not valid JSON ({err})') from err
    return {'params': tensors, NETWORK_KWARGS_KEY: kwargs}


_CONTAINER_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net_g', 'network', 'generator')


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = 'module.') -> 'OrderedDict[str, Any]':
    """Remove ``prefix`` from every key that has it (DataParallel / DDP / torch.compile's ``_orig_mod.``)."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())


def extract_state_dict(checkpoint: Any, param_key: str | None = 'params_ema', source: str = '<checkpoint>'
                       ) -> 'OrderedDict[str, torch.Tensor]':
    """Return the network state_dict held by ``checkpoint`` (an object from ``load_checkpoint``).

    ``param_key`` is tried first; then ``params_ema``, ``params`` and other common container keys;
    a mapping whose values are all tensors is taken as a raw state_dict. ``module.`` and
    ``_orig_mod.`` prefixes are removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{source}: expected a dict of tensors, found {type(checkpoint).__name__}')
    candidates = [param_key] if param_key else []
    candidates += [k for k in _CONTAINER_KEYS if k not in candidates]
    state = None
    for key in candidates:
        value = checkpoint.get(key)
        if isinstance(value, Mapping) and value:
            state = value
            break
    if state is None:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            state = checkpoint
        else:
            keys = ', '.join(list(map(str, checkpoint))[:8])
            raise CheckpointError(f'{source}: no network weights found (top-level keys: {keys})')
    state = strip_prefix(strip_prefix(state, 'module.'), '_orig_mod.')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{source}: entries that are not tensors: {bad[:5]}')
    return state


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and an atomic rename (``utils.files``)."""
    atomic_write(path, lambda f: torch.save(obj, f), sync=True)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str, network_kwargs: Mapping[str, Any] | None = None,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write a state_dict as ``.safetensors`` (atomically), readable by ``load_checkpoint`` and by spandrel.

    Args:
        state_dict: name -> tensor (copied to contiguous, unshared CPU memory, as the format requires).
        path: output file.
        network_kwargs: JSON-serialisable constructor arguments no shape tells (``FamilySpec.checkpoint``);
            stored in the metadata, so ``sr-arch infer`` rebuilds the same network.
        metadata: further strings for the file's metadata (e.g. family, variant).
    """
    from safetensors.torch import save

    tensors = {name: tensor.detach().to('cpu').contiguous().clone() for name, tensor in state_dict.items()}
    header = {'format': 'pt', **(metadata or {})}
    if network_kwargs is not None:
        header[SAFETENSORS_KWARGS_KEY] = json.dumps(dict(network_kwargs), sort_keys=True)
    data = save(tensors, metadata=header)
    atomic_write(path, lambda f: f.write(data), sync=True)
