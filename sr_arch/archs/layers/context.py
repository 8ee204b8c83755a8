"""Switches for how the networks compute, and whether a forward is being traced.

Two process-wide switches serve benchmarks and equivalence tests:

* ``attention_backend('sdpa' | 'plain')``: the attention kernel (``attention.attention``);
* ``plain_formulation()``: the official formulation everywhere: plain attention, no caches, no scratch
  buffers, stock ``nn.Linear`` / ``nn.Conv2d`` kernels.

``tracing()`` says whether the current forward runs under ``torch.compile``, ``torch.export``, an ONNX export
or ``torch.jit.trace``. Caches, scratch buffers and the CPU kernel substitutes step aside then: a traced
graph must not depend on Python-side state, and nothing created while tracing (fake or symbolic tensors) may
be kept for a later eager call.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

ATTENTION_BACKENDS = ('sdpa', 'plain')
_attention_backend = 'sdpa'
_lean_paths_enabled = True


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily select the attention kernel: ``'sdpa'`` (fused, default) or ``'plain'``."""
    global _attention_backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f'attention backend must be one of {ATTENTION_BACKENDS}, got {name!r}')
    previous, _attention_backend = _attention_backend, name
    try:
        yield
    finally:
        _attention_backend = previous


def get_attention_backend() -> str:
    return _attention_backend


@contextlib.contextmanager
def plain_formulation() -> Iterator[None]:
    """Run the networks as the official code does: plain softmax attention, no caches, stock kernels.

    The baseline of ``benchmarks/speed.py`` and of the equivalence tests: inside this context every forward
    rebuilds its shift masks and position biases, attention is ``softmax(q @ k^T * scale + bias) @ v`` with the
    whole score matrix, and ``TokenLinear`` / ``TokenConv2d`` / ``grouped_token_linear`` run as ``nn.Linear`` /
    ``nn.Conv2d`` / per-slice layers.
    """
    with lean_paths(False), attention_backend('plain'):
        yield


@contextlib.contextmanager
def lean_paths(enabled: bool) -> Iterator[None]:
    """Temporarily allow (True) or forbid (False) caches, scratch buffers and the CPU kernel substitutes
    (``TokenLinear`` as a 1x1 convolution, the channels-last eval paths); the attention backend is unchanged.
    ``plain_formulation()`` is ``lean_paths(False)`` with plain attention."""
    global _lean_paths_enabled
    previous, _lean_paths_enabled = _lean_paths_enabled, enabled
    try:
        yield
    finally:
        _lean_paths_enabled = previous


_FAKE = torch._C._TorchDispatchModeKey.FAKE
_PROXY = torch._C._TorchDispatchModeKey.PROXY


def tracing(x: Tensor | None = None) -> bool:
    """True while ``torch.compile``, ``torch.export``, an ONNX export or ``torch.jit.trace`` runs the code
    (or when ``x`` is a fake tensor)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(x, FakeTensor)
            or torch._C._get_dispatch_mode(_FAKE) is not None or torch._C._get_dispatch_mode(_PROXY) is not None)


def symbolic(*sizes: object) -> bool:
    """True when any of ``sizes`` is a symbolic integer (``torch.export`` / ONNX export with dynamic shapes,
    ``torch.compile(dynamic=True)``): code on such sizes must not branch on them, or the graph freezes them."""
    return any(isinstance(size, torch.SymInt) for size in sizes)


def lean_paths_enabled(x: Tensor | None = None) -> bool:
    """Whether caches, scratch buffers and the CPU kernel substitutes may be used now: not under
    ``plain_formulation()`` and not while tracing."""
    return _lean_paths_enabled and not tracing(x)
