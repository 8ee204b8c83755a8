"""Safe checkpoint reading and atomic writing.

* ``load_checkpoint``: ``torch.load(weights_only=True)`` (or safetensors); a file that needs arbitrary
  pickle code is refused with a message naming the file, never executed. A ``.safetensors`` file written by
  ``save_safetensors`` comes back as ``{'params': tensors, 'network_kwargs': ...}`` (its metadata).
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
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or holds no usable weights."""


def load_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> Any:
    """Read a ``.pth``/``.pt``/``.ckpt`` (weights only) or ``.safetensors`` file."""
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{path}: refused to load; the file needs arbitrary pickle code, which could run anything '
            f'(weights_only=True failed: {str(err).splitlines()[0]}). Re-save only its tensors, e.g. '
            "torch.save({'params': model.state_dict()}, path), from an environment you trust.") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: not a readable checkpoint ({type(err).__name__}: {err})') from err


#: safetensors metadata key holding the JSON of the network's stored constructor arguments
SAFETENSORS_KWARGS_KEY = 'network_kwargs'


def _load_safetensors(path: str, map_location: str | torch.device) -> Any:
    """Tensors of a ``.safetensors`` file; with ``network_kwargs`` metadata, ``{'params': ..., key: kwargs}``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from sr_arch.archs.spec import NETWORK_KWARGS_KEY

    try:
        tensors = load_file(path, device=str(map_location))
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: not a readable safetensors file ({err})') from err
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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync, then rename it to ``path``.

    A failure or a kill leaves ``path`` as it was (the temporary file is removed on failure).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; checkpoints are shared files
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write(path, lambda f: torch.save(obj, f))


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
    atomic_write(path, lambda f: f.write(data))
