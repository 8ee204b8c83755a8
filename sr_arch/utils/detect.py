"""Which network, variant and scale a checkpoint holds, from its state_dict names and shapes alone.

``detect_architecture(state_dict)`` recognises the five families by their characteristic keys and reads
every constructor argument that shapes can tell (channels, blocks per group, heads, windows, ratios,
upscale...), so our own training outputs with non-published sizes are recognised as well as the
published variants, which are then named from the arch modules' ``*_VARIANTS`` tables. Only shapes are
read (meta tensors work); where a value disambiguates what shapes cannot (RGT's window orientation), it
is used when present.

With ``verify=True`` the guessed network is built on the meta device and its names/shapes must equal
the checkpoint's. A checkpoint that no family explains raises ``DetectionError`` naming the closest
family and the keys that differ (counts and examples).
"""
from __future__ import annotations

import functools
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from sr_arch.errors import DetectionError

#: registry name -> module holding the class and its ``*_VARIANTS`` table
FAMILY_MODULES = {
    'HAT': 'sr_arch.archs.hat_arch',
    'RGT': 'sr_arch.archs.rgt_arch',
    'GRFormer': 'sr_arch.archs.grformer_arch',
    'ESRT': 'sr_arch.archs.esrt_arch',
    'LabNet': 'sr_arch.archs.labnet_arch',
}

Shapes = dict[str, tuple[int, ...]]


class _NotThisFamily(Exception):
    """A family detector's signature keys are absent or inconsistent (the message says why)."""


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
            return f'{self.variant} x{self.scale}'
        shown = {k: v for k, v in self.kwargs.items() if k in _DESCRIBE_KEYS}
        return f'{self.family} ({", ".join(f"{k}={v}" for k, v in shown.items())}) x{self.scale}'


_DESCRIBE_KEYS = ('embed_dim', 'depths', 'depth', 'num_heads', 'window_size', 'split_size', 'nf', 'num_blocks')


# ---------------------------------------------------------------------------------------------- helpers

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


def _shape(shapes: Shapes, name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise _NotThisFamily(f'missing {name}')
    return shapes[name]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over all names."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for name in shapes if (m := regex.fullmatch(name))})


def _counts(shapes: Shapes, group_pattern: str, item_pattern: str) -> list[int]:
    """Items per group, e.g. blocks per layer: ``item_pattern`` has ``{group}`` and one capture group."""
    groups = _indices(shapes, group_pattern)
    if groups != list(range(len(groups))) or not groups:
        raise _NotThisFamily(f'groups {groups} are not numbered 0..n-1')
    counts = []
    for group in groups:
        items = _indices(shapes, item_pattern.format(group=group))
        if items != list(range(len(items))) or not items:
            raise _NotThisFamily(f'group {group}: items {items} are not numbered 0..n-1')
        counts.append(len(items))
    return counts


def _pixelshuffle_scale(shapes: Shapes, prefix: str, num_feat: int) -> int:
    """Scale of an EDSR/basicsr ``Upsample`` (convs num_feat -> 4*num_feat per x2, or one to 9*num_feat)."""
    convs = [shapes[f'{prefix}.{i}.weight'] for i in _indices(shapes, re.escape(prefix) + r'\.(\d+)\.weight')]
    expanding = [s for s in convs if len(s) == 4 and s[1] == num_feat and s[0] in (4 * num_feat, 9 * num_feat)]
    if not expanding:
        raise _NotThisFamily(f'no pixel-shuffle convolution under {prefix}')
    if expanding[0][0] == 9 * num_feat:
        return 3
    return 2 ** len(expanding)


def _ratio(numerator: int, denominator: int) -> float | int:
    value = numerator / denominator
    return int(value) if value.is_integer() else value


def _integer_divisor(total: int, quotient: int) -> int:
    """The r with ``total // r == quotient`` (how ``compress_ratio`` / ``squeeze_factor`` enter shapes)."""
    ratio = max(1, total // quotient)
    if total // ratio != quotient:
        raise _NotThisFamily(f'no integer r with {total} // r == {quotient}')
    return ratio


def _rectangle_from_counts(tokens: int, table_rows: int) -> tuple[int, int]:
    """(a, b) with a*b = tokens and (2a-1)(2b-1) = table_rows, a <= b."""
    total = (4 * tokens + 1 - table_rows) / 2  # a + b
    disc = total * total - 4 * tokens
    if disc < 0:
        raise _NotThisFamily(f'no window with {tokens} tokens and {table_rows} relative positions')
    a = round((total - math.sqrt(disc)) / 2)
    b = round(total) - a
    if a * b != tokens or (2 * a - 1) * (2 * b - 1) != table_rows:
        raise _NotThisFamily(f'no window with {tokens} tokens and {table_rows} relative positions')
    return a, b


# ---------------------------------------------------------------------------------------------- families

def _detect_hat(shapes: Shapes, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    _shape(shapes, 'relative_position_index_OCA')
    embed_dim, in_chans = _shape(shapes, 'conv_first.weight')[:2]
    depths = _counts(shapes, r'layers\.(\d+)\.residual_group\.overlap_attn\.qkv\.weight',
                     r'layers\.{group}\.residual_group\.blocks\.(\d+)\.norm1\.weight')
    block = 'layers.{}.residual_group.blocks.0.'
    num_heads = [_shape(shapes, block.format(i) + 'attn.relative_position_bias_table')[1] for i in range(len(depths))]
    window_size = math.isqrt(_shape(shapes, 'relative_position_index_SA')[0])
    overlap_window = math.isqrt(_shape(shapes, 'relative_position_index_OCA')[1])
    first = block.format(0)
    return dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
        overlap_ratio=_ratio(overlap_window - window_size, window_size),
        compress_ratio=_integer_divisor(embed_dim, _shape(shapes, first + 'conv_block.cab.0.weight')[0]),
        squeeze_factor=_integer_divisor(embed_dim, _shape(shapes, first + 'conv_block.cab.3.attention.1.weight')[0]),
        mlp_ratio=_ratio(_shape(shapes, first + 'mlp.fc1.weight')[0], embed_dim),
        qkv_bias=first + 'attn.qkv.bias' in shapes,
        resi_connection='1conv' if 'layers.0.conv.weight' in shapes else 'identity',
        upscale=_pixelshuffle_scale(shapes, 'upsample', _shape(shapes, 'conv_before_upsample.0.weight')[0]),
    )


def _detect_rgt(shapes: Shapes, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    _shape(shapes, 'before_RG.1.weight')
    embed_dim, in_chans = _shape(shapes, 'conv_first.weight')[:2]
    depth = _counts(shapes, r'layers\.(\d+)\.blocks\.0\.norm1\.weight',
                    r'layers\.{group}\.blocks\.(\d+)\.norm1\.weight')
    branch = 'layers.{}.blocks.0.attn.attns.0.'
    num_heads = [2 * _shape(shapes, branch.format(i) + 'pos.pos3.2.weight')[0] for i in range(len(depth))]
    rpe_name = branch.format(0) + 'rpe_biases'
    rpe_biases = state_dict.get(rpe_name)
    if isinstance(rpe_biases, torch.Tensor) and not rpe_biases.is_meta and rpe_biases.numel():
        # the offsets table runs from 1 - H_sp to H_sp - 1 (column 0) and the same for W_sp
        split_size = [int(rpe_biases[:, 0].max()) + 1, int(rpe_biases[:, 1].max()) + 1]
    else:  # shapes cannot tell (8, 32) from (32, 8); published models use the short side first
        split_size = list(_rectangle_from_counts(_shape(shapes, branch.format(0) + 'relative_position_index')[0],
                                                 _shape(shapes, rpe_name)[0]))
    kwargs = dict(
        in_chans=in_chans, embed_dim=embed_dim, depth=depth, num_heads=num_heads, split_size=split_size,
        mlp_ratio=_ratio(_shape(shapes, 'layers.0.blocks.0.mlp.fc1.weight')[0], embed_dim),
        qkv_bias='layers.0.blocks.0.attn.qkv.bias' in shapes,
        resi_connection='3conv' if 'layers.0.conv.0.weight' in shapes else '1conv',
        upscale=_pixelshuffle_scale(shapes, 'upsample', _shape(shapes, 'conv_before_upsample.0.weight')[0]),
    )
    if 'layers.0.blocks.1.attn.q.weight' in shapes:
        kwargs['c_ratio'] = _ratio(shapes['layers.0.blocks.1.attn.q.weight'][0], embed_dim)
    return kwargs


def _detect_grformer(shapes: Shapes, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    embed_dim, in_chans = _shape(shapes, 'conv_first.weight')[:2]
    depths = _counts(shapes, r'layers\.(\d+)\.blocks\.0\.attn\.logit_scale',
                     r'layers\.{group}\.blocks\.(\d+)\.attn\.logit_scale')
    num_heads = [_shape(shapes, f'layers.{i}.blocks.0.attn.logit_scale')[0] for i in range(len(depths))]
    table = _shape(shapes, 'layers.0.blocks.0.attn.relative_position_bias_table')  # (1, 2Wh-1, 2Ww-1, 2)
    window_size = [(table[1] + 1) // 2, (table[2] + 1) // 2]
    kwargs = dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
        mlp_ratio=_ratio(_shape(shapes, 'layers.0.blocks.0.mlp.fc1.weight')[0], embed_dim),
        upscale=math.isqrt(_shape(shapes, 'upsample.0.weight')[0] // in_chans),
    )
    masks = [name for name in shapes if re.fullmatch(r'layers\.\d+\.blocks\.\d+\.attn_mask', name)]
    if masks:  # (num_windows, N, N) for a square img_size x img_size map
        num_windows, tokens = shapes[masks[0]][:2]
        kwargs['img_size'] = math.isqrt(num_windows * tokens)
    return kwargs


def _detect_esrt(shapes: Shapes, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    num_feat = _shape(shapes, 'head.0.weight')[0]
    _shape(shapes, 'body.0.attention.atten.qkv.weight')
    return dict(upscale=_pixelshuffle_scale(shapes, 'tail.0', num_feat))


def _detect_labnet(shapes: Shapes, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    nf = _shape(shapes, 'Restorer.head.weight')[0]
    stage_names = getattr(importlib.import_module(FAMILY_MODULES['LabNet']), 'STAGE_NAMES')
    num_blocks = []
    for stage in stage_names:
        blocks = _indices(shapes, rf'Restorer\.{stage}\.(\d+)\.norm1\.weight')
        if blocks != list(range(len(blocks))):
            raise _NotThisFamily(f'Restorer.{stage}: blocks {blocks} are not numbered 0..n-1')
        num_blocks.append(len(blocks))
    return dict(nf=nf, num_blocks=num_blocks, upscale=_pixelshuffle_scale(shapes, 'Restorer.upscale', nf))


_DETECTORS: dict[str, Callable[[Shapes, Mapping[str, Any]], dict[str, Any]]] = {
    'HAT': _detect_hat, 'RGT': _detect_rgt, 'GRFormer': _detect_grformer, 'ESRT': _detect_esrt,
    'LabNet': _detect_labnet,
}


# ---------------------------------------------------------------------------------------------- variants

def family_variants(family: str) -> dict[str, dict[str, Any]]:
    """The published variants of ``family`` from its arch module (``HAT_VARIANTS`` ...); {} if none."""
    module = importlib.import_module(FAMILY_MODULES[family])
    tables = [value for name, value in vars(module).items() if name.endswith('_VARIANTS') and isinstance(value, dict)]
    return tables[0] if tables else {}


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _variant_name(name: str) -> str:
    return re.sub(r'\s+x\d+$', '', name)  # 'ESRT x4' -> 'ESRT' (the scale is reported separately)


def published_variants(family: str, scale: int) -> dict[str, dict[str, Any]]:
    """Variant name -> constructor kwargs at ``scale`` (tables keyed per scale, like ESRT's, are folded)."""
    variants = {}
    for name, kwargs in family_variants(family).items():
        if kwargs.get('upscale', scale) == scale:
            variants.setdefault(_variant_name(name), {**kwargs, 'upscale': scale})
    return variants


def match_variant(family: str, kwargs: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(published variant name or None, full constructor kwargs).

    A variant matches when every argument both it and ``kwargs`` have is equal; arguments shapes cannot
    tell (img_range, upsampler, conv_scale...) come from the matching variant, or from the family's first
    variant for non-published sizes.
    """
    variants = family_variants(family)
    for name, variant_kwargs in variants.items():
        common = set(variant_kwargs) & set(kwargs)
        if all(_normalise(variant_kwargs[k]) == _normalise(kwargs[k]) for k in common):
            return _variant_name(name), {**variant_kwargs, **kwargs}
    base = next(iter(variants.values()), {})
    return None, {**base, **kwargs}


# ---------------------------------------------------------------------------------------------- detection

def build_on_meta(family: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``family`` with ``kwargs``, parameters on the meta device (no memory, no init cost).

    Falls back to the CPU for a constructor that needs real values (e.g. ``.tolist()`` on a tensor).
    """
    from basicsr.utils.registry import ARCH_REGISTRY

    importlib.import_module(FAMILY_MODULES[family])
    try:
        with torch.device('meta'):
            return ARCH_REGISTRY.get(family)(**kwargs)
    except NotImplementedError:
        return ARCH_REGISTRY.get(family)(**kwargs)


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


REFERENCE_SCALES = (2, 3, 4)


@functools.lru_cache(maxsize=None)
def _reference(family: str, scale: int = 4) -> tuple[str, Shapes]:
    """(name, names/shapes) of the family's first published variant at ``scale``: the yardstick when
    nothing matches."""
    name, kwargs = next(iter(published_variants(family, scale).items()))
    return f'{name} x{scale}', state_dict_shapes(build_on_meta(family, kwargs).state_dict())


def closest_family(shapes: Shapes) -> tuple[str, float]:
    """The family whose reference key patterns overlap most with ``shapes`` (Jaccard index of patterns)."""
    patterns = {_key_pattern(k) for k in shapes}
    best, best_score = '', -1.0
    for family in FAMILY_MODULES:
        try:
            reference = {_key_pattern(k) for k in _reference(family)[1]}
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
    for family, detector in _DETECTORS.items():
        try:
            inferred = detector(shapes, state_dict)
        except _NotThisFamily as reason:
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
        raise DetectionError(f'{source}: not a checkpoint of {", ".join(FAMILY_MODULES)} (no architecture loadable)')
    comparisons = []
    for scale in REFERENCE_SCALES:  # the scale that explains the most keys
        reference_name, reference_shapes = _reference(family, scale)
        differences = compare_state_dicts(reference_shapes, shapes)
        comparisons.append((sum(map(len, differences)), reference_name, differences))
    _, reference_name, (missing, unexpected, mismatched) = min(comparisons)
    raise DetectionError(
        f'{source}: not a checkpoint of {", ".join(FAMILY_MODULES)}; closest is {family} '
        f'({score:.0%} of key patterns shared; {reasons.get(family, "")}); compared with '
        f'{reference_name}: {describe_differences(missing, unexpected, mismatched)}')
