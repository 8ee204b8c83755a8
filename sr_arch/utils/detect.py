"""Which network, variant and scale a checkpoint holds, from its state_dict names and shapes alone.

``detect_architecture(state_dict)`` asks every family's ``detect`` (``sr_arch.archs.FAMILIES``; each reads the
constructor arguments that shapes can tell: channels, blocks per group, heads, windows, ratios, upscale...), so
our own training outputs with non-published sizes are recognised as well as the published variants, which are
then named from the families' variant tables. Only shapes are read (meta tensors work); where a value
disambiguates what shapes cannot (RGT's window orientation), the family's detector uses it when present.

With ``verify=True`` the guessed network is built on the meta device and its names/shapes must equal the
checkpoint's. A checkpoint that no family explains raises ``DetectionError`` naming the closest family and the
keys that differ (counts and examples).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from sr_arch.archs import FAMILIES, family_spec
from sr_arch.archs.spec import NotThisFamily, Shapes, published_name
from sr_arch.errors import DetectionError


@dataclass(frozen=True)
class Detection:
    """A recognised checkpoint: family (registry name), constructor kwargs, published variant or None."""

    family: str
    kwargs: dict[str, Any] = field(hash=False)
    variant: str | None = None

    @property
    def scale(self) -> int:
        return int(self.kwargs['upscale'])

    def describe(self) -> str:
        """E.g. 'HAT-L x4', or 'HAT (embed_dim=96, depths=[2, 2], ...) x2' for a non-published size."""
        if self.variant is not None:
            return published_name(self.variant, self.scale)
        shown = {k: v for k, v in self.kwargs.items() if k in _DESCRIBE_KEYS}
        return f'{self.family} ({", ".join(f"{k}={v}" for k, v in shown.items())}) x{self.scale}'


_DESCRIBE_KEYS = ('embed_dim', 'depths', 'depth', 'num_heads', 'window_size', 'split_size', 'nf', 'num_blocks')


def state_dict_shapes(state_dict: Mapping[str, Any]) -> Shapes:
    """name -> shape for tensors (any device, meta included) or for [shape, dtype] manifest entries."""
    shapes = {}
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            shapes[name] = tuple(value.shape)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
            shapes[name] = tuple(value[0])
        else:
            shapes[name] = tuple(value)
    return shapes


# ---------------------------------------------------------------------------------------------- variants

def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def published_variants(family: str, scale: int) -> dict[str, dict[str, Any]]:
    """Variant name -> constructor kwargs at ``scale``."""
    spec = family_spec(family)
    return {name: spec.variant_kwargs(name, scale) for name in spec.variants}


def match_variant(family: str, kwargs: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(published variant name or None, full constructor kwargs).

    A variant matches when every argument both it and ``kwargs`` have is equal; arguments shapes cannot
    tell (img_range, upsampler, conv_scale...) come from the matching variant, or from the family's first
    variant for non-published sizes.
    """
    variants = family_spec(family).variants
    for name, variant_kwargs in variants.items():
        common = set(variant_kwargs) & set(kwargs)
        if all(_normalise(variant_kwargs[k]) == _normalise(kwargs[k]) for k in common):
            return name, {**variant_kwargs, **kwargs}
    base = next(iter(variants.values()), {})
    return None, {**base, **kwargs}


# ---------------------------------------------------------------------------------------------- detection

def build_on_meta(family: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``family`` with ``kwargs``, parameters on the meta device (no memory, no init cost).

    Falls back to the CPU for a constructor that needs real values (e.g. ``.tolist()`` on a tensor).
    """
    cls = family_spec(family).cls
    try:
        with torch.device('meta'):
            return cls(**kwargs)
    except NotImplementedError:
        return cls(**kwargs)


def compare_state_dicts(expected: Shapes, actual: Shapes) -> tuple[list[str], list[str], list[str]]:
    """(missing names, unexpected names, 'name: expected shape vs actual shape' for shape mismatches)."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [f'{k}: {list(expected[k])} vs {list(actual[k])}' for k in expected
                  if k in actual and tuple(expected[k]) != tuple(actual[k])]
    return missing, unexpected, mismatched


def describe_differences(missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str],
                         examples: int = 3) -> str:
    parts = []
    for what, names in (('missing', missing), ('unexpected', unexpected), ('with other shapes', mismatched)):
        if names:
            shown = ', '.join(names[:examples]) + (', ...' if len(names) > examples else '')
            parts.append(f'{len(names)} {what} ({shown})')
    return '; '.join(parts) if parts else 'no differences'


def _key_pattern(name: str) -> str:
    return re.sub(r'\.\d+(?=\.|$)', '.#', name)


@functools.lru_cache(maxsize=None)
def _reference(family: str, scale: int) -> tuple[str, Shapes]:
    """(name, names/shapes) of the family's first published variant at ``scale``: the yardstick when
    nothing matches."""
    name, kwargs = next(iter(published_variants(family, scale).items()))
    return published_name(name, scale), state_dict_shapes(build_on_meta(family, kwargs).state_dict())


def closest_family(shapes: Shapes) -> tuple[str, float]:
    """The family whose reference key patterns overlap most with ``shapes`` (Jaccard index of patterns)."""
    patterns = {_key_pattern(k) for k in shapes}
    best, best_score = '', -1.0
    for family, spec in FAMILIES.items():
        try:
            reference = {_key_pattern(k) for k in _reference(family, spec.scales[-1])[1]}
        except Exception:  # noqa: BLE001  (an arch that cannot be built is simply not a candidate)
            continue
        score = len(patterns & reference) / max(1, len(patterns | reference))
        if score > best_score:
            best, best_score = family, score
    return best, best_score


def detect_architecture(state_dict: Mapping[str, Any], source: str = '<state_dict>', verify: bool = True) -> Detection:
    """Recognise family, constructor kwargs, variant and scale of a state_dict (names -> tensors or shapes).

    Args:
        state_dict: network weights with official names (``module.`` prefixes already removed, as
            ``sr_arch.utils.checkpoint.extract_state_dict`` returns them), or a manifest's
            ``{name: [shape, dtype]}``.
        source: file name for error messages.
        verify: build the guess on the meta device and require identical names and shapes.

    Raises:
        DetectionError: no family explains the state_dict; the message names the closest family and the
            differing keys.
    """
    shapes = state_dict_shapes(state_dict)
    reasons = {}
    families = ', '.join(FAMILIES)
    for family, spec in FAMILIES.items():
        try:
            inferred = spec.detect(shapes, state_dict)
        except NotThisFamily as reason:
            reasons[family] = str(reason)
            continue
        variant, kwargs = match_variant(family, inferred)
        detection = Detection(family, kwargs, variant)
        if not verify:
            return detection
        expected = state_dict_shapes(build_on_meta(family, kwargs).state_dict())
        missing, unexpected, mismatched = compare_state_dicts(expected, shapes)
        if not (missing or unexpected or mismatched):
            return detection
        raise DetectionError(
            f'{source}: looks like {family} ({detection.describe()}) but does not match it: '
            f'{describe_differences(missing, unexpected, mismatched)}')
    family, score = closest_family(shapes)
    if not family:
        raise DetectionError(f'{source}: not a checkpoint of {families} (no architecture loadable)')
    comparisons = []
    for scale in FAMILIES[family].scales:  # the scale that explains the most keys
        reference_name, reference_shapes = _reference(family, scale)
        differences = compare_state_dicts(reference_shapes, shapes)
        comparisons.append((sum(map(len, differences)), reference_name, differences))
    _, reference_name, (missing, unexpected, mismatched) = min(comparisons)
    raise DetectionError(
        f'{source}: not a checkpoint of {families}; closest is {family} '
        f'({score:.0%} of key patterns shared; {reasons.get(family, "")}); compared with '
        f'{reference_name}: {describe_differences(missing, unexpected, mismatched)}')
