"""One declarative record per network family: the single source of truth for everything outside the network.

Each arch file ends with ``FAMILY = FamilySpec(...)``: registry name, class, published variants (without the
scale) and scales, ``detect`` (state_dict shapes -> constructor kwargs), the size rules of the network (it always
pads itself, so these only guide tiling), checkpoint conventions and a tiny configuration for tests and
benchmarks. ``sr_arch.archs.FAMILIES`` collects the records; detection, ``infer``, ``profile``, ``demo``, the
models and ``benchmarks/speed.py`` loop over them and name no family.

The shape readers below (``shape_of``, ``group_counts``, ``pixelshuffle_scale``...) are what the families'
``detect`` functions are written with; a detector raises ``NotThisFamily`` naming the missing or inconsistent keys.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from torch import nn

Shapes = dict[str, tuple[int, ...]]

#: top-level checkpoint key under which this package stores ``CheckpointConvention.stored_kwargs``
NETWORK_KWARGS_KEY = 'network_kwargs'


class NotThisFamily(Exception):
    """A family detector's signature keys are absent or inconsistent (the message says which)."""


def _one(kwargs: Mapping[str, Any]) -> int:
    return 1


def _unbounded(kwargs: Mapping[str, Any]) -> int | None:
    return None


class SizeRules(NamedTuple):
    """What input sizes a network computes on without padding (it pads any other size itself)."""

    pad_multiple: int  # H and W are padded to a multiple of this
    min_size: int  # and to at least this (eval mode)


@dataclass(frozen=True)
class CheckpointConvention:
    """How a family's weights are stored.

    Attributes:
        stored_kwargs: constructor arguments that shapes cannot tell and that change the output; checkpoints
            written by this package store them (``network_kwargs``), so ``infer`` rebuilds the same network.
        official_kwargs: the values of ``stored_kwargs`` to assume for checkpoints that do not store them (the
            official releases).
    """

    stored_kwargs: tuple[str, ...] = ()
    official_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilySpec:
    """Everything about a network family that code outside its arch file needs.

    Attributes:
        name: registry name (``network_g.type``).
        cls: the network class.
        variants: published variant name -> constructor kwargs without ``upscale``.
        scales: published scales (every variant exists at each).
        detect: (shapes, state_dict) -> constructor kwargs including ``upscale``; raises ``NotThisFamily``.
        tiny: a small configuration (without ``upscale``) for tests and quick benchmarks.
        pad_multiple: full kwargs -> the multiple of H and W the network pads its input to (tiles of such
            sizes need no padding); read it through ``size_rules``.
        min_size: full kwargs -> the smallest H and W the network computes on in eval mode (smaller inputs
            are padded up to it); read it through ``size_rules``.
        max_traced_size: full kwargs -> the largest H and W that a graph traced for any input size (ONNX export
            with dynamic H and W) computes exactly, or None when every size is exact (RGT: its RG-SA loops a
            size-dependent number of times, which a graph unrolls up to a bound).
        aliases: other registered names of the same class (official names).
        group_args: constructor lists with one entry per residual group (benchmarks cut groups with them).
        checkpointing_arg: the constructor argument that turns gradient checkpointing on, if any.
        checkpoint: checkpoint conventions.
        model_type: the ``model_type`` of the family's official option files.
    """

    name: str
    cls: type[nn.Module]
    variants: Mapping[str, Mapping[str, Any]]
    scales: tuple[int, ...]
    detect: Callable[[Shapes, Mapping[str, Any]], dict[str, Any]]
    tiny: Mapping[str, Any]
    pad_multiple: Callable[[Mapping[str, Any]], int] = _one
    min_size: Callable[[Mapping[str, Any]], int] = _one
    max_traced_size: Callable[[Mapping[str, Any]], int | None] = _unbounded
    aliases: tuple[str, ...] = ()
    group_args: tuple[str, ...] = ()
    checkpointing_arg: str | None = None
    checkpoint: CheckpointConvention = CheckpointConvention()
    model_type: str = 'SRArchModel'

    def variant_kwargs(self, variant: str, upscale: int, **overrides: Any) -> dict[str, Any]:
        """Constructor arguments of the published ``variant`` at ``upscale``; ``overrides`` win."""
        if variant not in self.variants:
            raise KeyError(f'unknown {self.name} variant {variant!r}; known: {sorted(self.variants)}')
        return {**self.variants[variant], 'upscale': upscale, **overrides}

    def build(self, variant: str, upscale: int, **overrides: Any) -> nn.Module:
        """The published ``variant`` at ``upscale`` (build under ``torch.device('meta')`` for shapes only)."""
        return self.cls(**self.variant_kwargs(variant, upscale, **overrides))

    def full_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` completed with the constructor's defaults."""
        defaults = {name: p.default for name, p in inspect.signature(self.cls).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        return {**defaults, **kwargs}

    def stored_kwargs_of(self, net: nn.Module) -> dict[str, Any]:
        """The ``checkpoint.stored_kwargs`` values of a built network (read from its attributes of those names)."""
        return {name: getattr(net, name) for name in self.checkpoint.stored_kwargs}

    def size_rules(self, kwargs: Mapping[str, Any]) -> SizeRules:
        """The pad multiple and minimum side of the network built with ``kwargs``."""
        full = self.full_kwargs(kwargs)
        return SizeRules(int(self.pad_multiple(full)), int(self.min_size(full)))


def published_name(variant: str, scale: int) -> str:
    """'HAT-L', 4 -> 'HAT-L x4' (the manifests' and tables' naming)."""
    return f'{variant} x{scale}'


# ---------------------------------------------------------------------------------------------- shape readers

def shape_of(shapes: Shapes, name: str) -> tuple[int, ...]:
    """The shape of ``name``; ``NotThisFamily`` when absent."""
    if name not in shapes:
        raise NotThisFamily(f'missing {name}')
    return shapes[name]


def indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over all names."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for name in shapes if (m := regex.fullmatch(name))})


def numbered(shapes: Shapes, pattern: str, what: str) -> int:
    """How many items ``pattern`` (one capture group) numbers 0..n-1; ``NotThisFamily`` when there are gaps."""
    found = indices(shapes, pattern)
    if found != list(range(len(found))):
        raise NotThisFamily(f'{what}: {found} are not numbered 0..n-1')
    return len(found)


def group_counts(shapes: Shapes, group_pattern: str, item_pattern: str) -> list[int]:
    """Items per group, e.g. blocks per layer: ``item_pattern`` has ``{group}`` and one capture group."""
    groups = indices(shapes, group_pattern)
    if groups != list(range(len(groups))) or not groups:
        raise NotThisFamily(f'groups {groups} are not numbered 0..n-1')
    counts = []
    for group in groups:
        count = numbered(shapes, item_pattern.format(group=group), f'group {group} items')
        if not count:
            raise NotThisFamily(f'group {group} has no items')
        counts.append(count)
    return counts


def pixelshuffle_scale(shapes: Shapes, prefix: str, num_feat: int) -> int:
    """Scale of an EDSR/basicsr ``Upsample`` (convs num_feat -> 4*num_feat per x2, or one to 9*num_feat)."""
    convs = [shapes[f'{prefix}.{i}.weight'] for i in indices(shapes, re.escape(prefix) + r'\.(\d+)\.weight')]
    expanding = [s for s in convs if len(s) == 4 and s[1] == num_feat and s[0] in (4 * num_feat, 9 * num_feat)]
    if not expanding:
        raise NotThisFamily(f'no pixel-shuffle convolution under {prefix}')
    if expanding[0][0] == 9 * num_feat:
        return 3
    return 2 ** len(expanding)


def ratio(numerator: int, denominator: int) -> float | int:
    """numerator / denominator, as an int when whole (how mlp_ratio and friends are written in option files)."""
    value = numerator / denominator
    return int(value) if value.is_integer() else value


def integer_divisor(total: int, quotient: int) -> int:
    """The r with ``total // r == quotient`` (how ``compress_ratio`` / ``squeeze_factor`` enter shapes)."""
    r = max(1, total // quotient)
    if total // r != quotient:
        raise NotThisFamily(f'no integer r with {total} // r == {quotient}')
    return r


def rectangle_from_counts(tokens: int, table_rows: int) -> tuple[int, int]:
    """(a, b) with a*b = tokens and (2a-1)(2b-1) = table_rows, a <= b."""
    total = (4 * tokens + 1 - table_rows) / 2  # a + b
    disc = total * total - 4 * tokens
    if disc < 0:
        raise NotThisFamily(f'no window with {tokens} tokens and {table_rows} relative positions')
    a = round((total - math.sqrt(disc)) / 2)
    b = round(total) - a
    if a * b != tokens or (2 * a - 1) * (2 * b - 1) != table_rows:
        raise NotThisFamily(f'no window with {tokens} tokens and {table_rows} relative positions')
    return a, b
