"""The caches and scratch buffers of the windowed-attention networks, under one set of rules.

Each keeps results a later forward would otherwise recompute; none can return a stale or traced value:

* ``DerivedTensorCache``: a tensor computed from parameters and buffers (a gathered relative position bias,
  an MLP-generated bias). It is reused only while every source holds the same values (compared with a
  snapshot, so in-place ``.data`` writes such as basicsr's EMA update, ``load_state_dict``, ``.to()`` and
  dtype changes all invalidate it), only in eval mode without gradients into the sources, never while
  tracing, and never under ``plain_formulation()``.
* ``ShiftMaskCache``: shifted-window masks per input size (they depend on sizes only).
* ``MaskScratch``: reusable memory for the position bias + shift mask sums of one forward.

A network shares one ``ShiftMaskCache`` and one ``MaskScratch`` with its blocks (``share_with_submodules``).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from sr_arch.archs.layers.context import lean_paths_enabled
from sr_arch.archs.layers.windows import WindowSize, shifted_window_mask


def _same_values(snapshots: Sequence[Tensor], sources: Sequence[Tensor]) -> bool:
    return len(snapshots) == len(sources) and all(
        s.device == t.device and s.dtype == t.dtype and s.shape == t.shape and torch.equal(s, t)
        for s, t in zip(snapshots, sources))


class DerivedTensorCache:
    """Keeps ``compute()``'s result while ``sources`` keep their values (see the module docstring).

    The sources are the tensors the result depends on; their snapshots are kept with the result, so they
    should be small (position-bias tables, bias MLP weights, index buffers).
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[Tensor, ...], Tensor] | None = None

    def get(self, sources: Sequence[Tensor], compute: Callable[[], Tensor], training: bool) -> Tensor:
        """``compute()``, or the kept result of an earlier call with equal sources.

        Args:
            sources: every tensor ``compute`` reads.
            compute: builds the result from the sources.
            training: the owning module's mode; nothing is kept in training.
        """
        if not lean_paths_enabled(sources[0]):  # plain formulation or tracing: the cache is not touched
            return compute()
        if training or (torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
            self._entry = None  # the sources change every step: keep no copy
            return compute()
        entry = self._entry
        if entry is None or not _same_values(entry[0], sources):
            with torch.inference_mode(False), torch.no_grad():
                entry = self._entry = (tuple(s.detach().clone() for s in sources), compute())
        return entry[1]

    def clear(self) -> None:
        self._entry = None


class ShiftMaskCache:
    """Shifted-window masks (``shifted_window_mask``) for the ``capacity`` most recent keys.

    Keyed on (height, width, window_size, shift_size, device). A mask is as large as one head's attention over
    the whole image, so only a few are kept; the oldest goes first. Masks are normal tensors even when first
    built under ``inference_mode``. Under ``plain_formulation()`` and while tracing every call builds a fresh
    mask, as the official code does.
    """

    def __init__(self, capacity: int, fill: float = -100.0):
        self.capacity = capacity
        self.fill = fill
        self.masks: dict[tuple, Tensor] = {}

    def get(self, height: int, width: int, window_size: WindowSize, shift_size: WindowSize,
            device: torch.device, like: Tensor | None = None) -> Tensor:
        """(num_windows, Wh*Ww, Wh*Ww) mask of a (height, width) feature map (``like``: a tensor of the
        forward, to recognise fake tensors)."""
        if not lean_paths_enabled(like):
            return shifted_window_mask(height, width, window_size, shift_size, self.fill, device=device)
        key = (height, width, tuple(window_size), tuple(shift_size), device)
        mask = self.masks.get(key)
        if mask is None:
            while len(self.masks) >= self.capacity:
                self.masks.pop(next(iter(self.masks)))
            with torch.inference_mode(False):
                mask = self.masks[key] = shifted_window_mask(height, width, window_size, shift_size, self.fill,
                                                             device=device)
        return mask


class MaskScratch:
    """Reusable memory for the (nW * heads, N, N) sums of a position bias and a shift mask.

    A shifted-window block adds its (heads, N, N) position bias to the (nW, N, N) shift mask: 12-25 MiB per
    block at a 64x64 input, hundreds of MiB at 256x256. Allocating that afresh in every block costs more than
    the attention itself on CPU (fresh pages fault in). A network owns one ``MaskScratch`` shared by its blocks
    and runs its forward inside ``forward_scope()``: blocks that run without autograd then write their sums into
    one buffer, which is dropped when the outermost forward ends, so nothing stays allocated between forwards.
    With autograd on (the sum may be saved for backward), outside a scope, while tracing, or under
    ``plain_formulation()``, each sum is a new tensor. State is kept per thread.
    """

    def __init__(self) -> None:
        self._per_thread: dict[int, list] = {}  # thread id -> [scope depth, buffer or None]

    def forward_scope(self, like: Tensor | None = None) -> contextlib.AbstractContextManager:
        """The scope of one network forward (``like``: its input); a no-op while tracing."""
        return self._scope() if lean_paths_enabled(like) else contextlib.nullcontext()

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        state = self._per_thread.setdefault(threading.get_ident(), [0, None])
        state[0] += 1
        try:
            yield
        finally:
            state[0] -= 1
            if state[0] == 0:
                del self._per_thread[threading.get_ident()]

    def buffer(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A reusable (uninitialised) tensor of ``shape`` with ``like``'s dtype/device, or None when not allowed."""
        if torch.is_grad_enabled() or not lean_paths_enabled(like):
            return None
        state = self._per_thread.get(threading.get_ident())
        if state is None:
            return None
        buffer = state[1]
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            state[1] = None  # release the old one before allocating
            buffer = state[1] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer


def share_with_submodules(network: torch.nn.Module, name: str, value: Any) -> Any:
    """Set ``value`` (a cache or scratch object one network shares) on every submodule that declares the
    attribute ``name``; returns ``value``."""
    for module in network.modules():
        if hasattr(module, name):
            setattr(module, name, value)
    return value
