"""The published PSNR / SSIM of every released variant (``sr_arch/data/published_results.yaml``).

``published_result('RGT-S', 4)`` -> a ``PublishedResult`` with ``{set: (psnr, ssim)}`` (None where the
source has no number), the source and what is missing; ``variant_of_options(opt)`` names the variant an
option file tests (from ``network_g``, ImageNet pre-training and self-ensemble), so test.py can print
the published row beside ours. Set names are canonical (``Set5, Set14, B100, Urban100, Manga109``);
``canonical_set`` maps dataset names such as ``BSD100`` or LabNet's ``Set5_sig1.8`` to them.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from sr_arch.errors import PublishedDataError

DATA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data',
                         'published_results.yaml')

#: a metric value pair as published: (PSNR in dB or None, SSIM or None)
Pair = tuple['float | None', 'float | None']


@dataclass(frozen=True)
class PublishedResult:
    """One variant at one scale: ``values[set] = (psnr, ssim)``, either None when not published."""

    model: str
    scale: int
    values: dict[str, Pair] = field(default_factory=dict)
    source: str = ''
    missing: str = ''

    def get(self, set_name: str, metric: str) -> float | None:
        """``metric`` ('psnr' or 'ssim') of ``set_name`` (any spelling ``canonical_set`` knows), or None."""
        pair = self.values.get(canonical_set(set_name) or '')
        if pair is None or metric not in ('psnr', 'ssim'):
            return None
        return pair[0] if metric == 'psnr' else pair[1]


@dataclass(frozen=True)
class PublishedTable:
    """The whole data file: set names, set aliases, and ``results[(model, scale)]``."""

    sets: tuple[str, ...]
    set_aliases: dict[str, str]
    results: dict[tuple[str, int], PublishedResult]
    aliases: dict[str, str]  # lower-case alias or model name -> model name

    def model_name(self, name: str) -> str | None:
        return self.aliases.get(name.strip().lower())


def _pair(value: Any, where: str) -> Pair:
    if not (isinstance(value, list) and len(value) == 2):
        raise PublishedDataError(f'{where}: expected [PSNR, SSIM] (~ for a missing number), got {value!r}')
    psnr, ssim = value
    for number, low, high, what in ((psnr, 10.0, 60.0, 'PSNR'), (ssim, 0.0, 1.0, 'SSIM')):
        if number is not None and not (isinstance(number, (int, float)) and low < number <= high):
            raise PublishedDataError(f'{where}: {what} {number!r} is not a number in ({low}, {high}]')
    return (None if psnr is None else float(psnr), None if ssim is None else float(ssim))


def parse_published(data: Mapping[str, Any], source: str = DATA_FILE) -> PublishedTable:
    """Validate the data file's mapping and index it; raises ``PublishedDataError`` naming the entry."""
    sets = tuple(data.get('sets') or ())
    set_aliases = {str(k): str(v) for k, v in (data.get('set_aliases') or {}).items()}
    results: dict[tuple[str, int], PublishedResult] = {}
    aliases: dict[str, str] = {}
    for model, entry in (data.get('models') or {}).items():
        where = f'{source}: models.{model}'
        if not isinstance(entry, Mapping):
            raise PublishedDataError(f'{where}: expected a mapping of scales (x2, x3, x4)')
        for name in [model] + list(entry.get('aliases') or []):
            aliases[str(name).lower()] = model
        for key, block in entry.items():
            if key == 'aliases':
                continue
            match = re.fullmatch(r'x(\d)', str(key))
            if not match or not isinstance(block, Mapping):
                raise PublishedDataError(f'{where}.{key}: expected x2 / x3 / x4 mapping to a block of sets')
            values = {}
            for set_name, value in block.items():
                if set_name in ('source', 'missing'):
                    continue
                if set_name not in sets:
                    raise PublishedDataError(f'{where}.{key}.{set_name}: not one of the sets {list(sets)}')
                values[set_name] = _pair(value, f'{where}.{key}.{set_name}')
            has_number = any(v is not None for pair in values.values() for v in pair)
            if has_number and not block.get('source'):
                raise PublishedDataError(f'{where}.{key}: numbers without a source')
            if not has_number and not block.get('missing'):
                raise PublishedDataError(f'{where}.{key}: no numbers and no "missing" note saying why')
            results[(model, int(match.group(1)))] = PublishedResult(
                model, int(match.group(1)), values, str(block.get('source') or ''), str(block.get('missing') or ''))
    return PublishedTable(sets, set_aliases, results, aliases)


@functools.lru_cache(maxsize=4)
def load_published(path: str = DATA_FILE) -> PublishedTable:
    """The parsed data file (cached)."""
    with open(path, encoding='utf-8') as f:
        return parse_published(yaml.safe_load(f), path)


def canonical_set(name: str, table: PublishedTable | None = None) -> str | None:
    """Dataset name -> canonical set name: 'set5' -> 'Set5', 'BSD100' -> 'B100', 'Set5_sig1.8' -> 'Set5'.

    None when the name is not one of the benchmark sets.
    """
    table = table or load_published()
    base = re.sub(r'_sig[0-9.]+$', '', name.strip())  # LabNet's Gaussian8 datasets: <Set>_sig<width>
    by_lower = {s.lower(): s for s in table.sets}
    by_lower.update({alias.lower(): target for alias, target in table.set_aliases.items()})
    return by_lower.get(base.lower())


def published_result(model: str, scale: int, table: PublishedTable | None = None) -> PublishedResult | None:
    """The published numbers of ``model`` (a name or alias, e.g. 'RGT-S', 'HAT-ImageNet') at ``scale``."""
    table = table or load_published()
    name = table.model_name(model)
    return table.results.get((name, int(scale))) if name else None


def _matches_variant(network: Mapping[str, Any], variant_kwargs: Mapping[str, Any], defaults: Mapping[str, Any]
                     ) -> bool:
    def normal(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(normal(v) for v in value)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    return all(normal(network.get(key, defaults.get(key))) == normal(value) for key, value in variant_kwargs.items())


def variant_of_options(opt: Mapping[str, Any]) -> str | None:
    """The published variant an option file tests, as named in the data file, or None.

    ``network_g`` is matched against the family's published variants at ``scale`` (missing keys take the
    constructor's defaults); HAT / HAT-L whose ``name`` or weights path mentions ImageNet become HAT† /
    HAT-L†; with ``val.self_ensemble`` the '+' entry (e.g. RGT+) is used when the file has one. Real-world
    models (``model_type: Real...``: Real-HAT GAN, RealNet) are other weights than the published
    bicubic-SR variants: None.
    """
    network = dict(opt.get('network_g') or {})
    family = network.pop('type', None)
    scale = opt.get('scale') or network.get('upscale')
    if family == 'Bicubic':
        return 'Bicubic'
    if not family or not scale or str(opt.get('model_type', '')).startswith('Real'):
        return None
    from sr_arch.archs import find_family_spec

    spec = find_family_spec(family)
    if spec is None:
        return None
    defaults = spec.full_kwargs({})
    names = [name for name in spec.variants
             if _matches_variant(network, spec.variant_kwargs(name, int(scale)), defaults)]
    if not names:
        return None
    variant = names[0]
    weights = str((opt.get('path') or {}).get('pretrain_network_g') or '')
    if variant in ('HAT', 'HAT-L') and 'imagenet' in f"{opt.get('name', '')} {weights}".lower():
        variant += '†'
    if (opt.get('val') or {}).get('self_ensemble'):
        table = load_published()
        return f'{variant}+' if table.model_name(f'{variant}+') else None
    return variant
