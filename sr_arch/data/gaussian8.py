"""The Gaussian8 protocol (IKC/DAN "setting 1", LabNet's evaluation): kernel widths, dataset names, averaging.

Eight isotropic Gaussian blur widths per scale (x2 linspace(0.8, 1.6, 8), x3 linspace(1.35, 2.40, 8),
x4 linspace(1.8, 3.2, 8)), 21x21 kernels. The test sets are written by ``sr-arch prepare gaussian8``
(``sr_arch.data.prepare.gaussian8``); ``BlindSRDataset`` (``sigmas: gaussian8``) makes the same LRs on
the fly for validation.

The published numbers are the mean over the eight widths. The test option files list one dataset per
set and width, named ``<Set>_sig<sigma:.2f>``; ``average_over_widths`` turns those per-width results
into per-set averages.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Mapping

import numpy as np

#: (first, last) of the eight kernel widths per scale
GAUSSIAN8_RANGES = {2: (0.8, 1.6), 3: (1.35, 2.40), 4: (1.8, 3.2)}
NUM_WIDTHS = 8
KERNEL_SIZE = 21
BENCHMARK_SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')

_DATASET_NAME = re.compile(r'^(?P<set>.+)_sig(?P<sigma>\d+(?:\.\d+)?)$')


def gaussian8_sigmas(scale: int) -> list[float]:
    """The eight kernel widths of ``scale`` (2, 3 or 4)."""
    if scale not in GAUSSIAN8_RANGES:
        raise ValueError(f'Gaussian8 is defined for scales {sorted(GAUSSIAN8_RANGES)}, got {scale!r}')
    first, last = GAUSSIAN8_RANGES[scale]
    return [float(s) for s in np.linspace(first, last, NUM_WIDTHS)]


def width_tag(sigma: float) -> str:
    """Folder / dataset-name suffix of a width: ``sig1.80``."""
    return f'sig{sigma:.2f}'


def dataset_name(set_name: str, sigma: float) -> str:
    """Name of one per-width test dataset in our option files: ``Set5_sig1.80``."""
    return f'{set_name}_{width_tag(sigma)}'


def average_over_widths(results: Mapping[str, Mapping[str, float]],
                        require_widths: int | None = NUM_WIDTHS) -> dict[str, dict[str, float]]:
    """Per-set means over the kernel widths of per-width results.

    Args:
        results: ``{dataset_name: {metric: value}}`` as in the test pipeline's results JSON, e.g.
            ``{'Set5_sig1.80': {'psnr': 31.2, 'ssim': 0.88}, 'Set5_sig2.00': {...}, ...}``. Names of the
            form ``<Set>_sig<sigma>`` are grouped by ``<Set>``; any other entry is copied unchanged.
        require_widths: number of widths each set must have (8 for Gaussian8); None accepts any count.

    Returns:
        ``{set_name: {metric: mean over its widths}}``, sets in order of first appearance.

    Raises:
        ValueError: a set has a different number of widths than ``require_widths`` (a partial run
            would otherwise be reported as a Gaussian8 average), or its widths disagree on the metrics,
            or a value is not a number.
    """
    grouped: 'OrderedDict[str, list[tuple[str, Mapping[str, float]]]]' = OrderedDict()
    passthrough: dict[str, dict[str, float]] = {}
    for name, metrics in results.items():
        match = _DATASET_NAME.match(name)
        if match is None:
            passthrough[name] = dict(metrics)
            continue
        grouped.setdefault(match['set'], []).append((name, metrics))

    averages: dict[str, dict[str, float]] = {}
    for set_name, entries in grouped.items():
        if require_widths is not None and len(entries) != require_widths:
            raise ValueError(f'average_over_widths: {set_name} has {len(entries)} kernel widths '
                             f'({[name for name, _ in entries]}), expected {require_widths}')
        metric_names = list(entries[0][1])
        for name, metrics in entries:
            if set(metrics) != set(metric_names):
                raise ValueError(f'average_over_widths: {name} has metrics {sorted(metrics)}, '
                                 f'but {entries[0][0]} has {sorted(metric_names)}')
            for metric, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                    raise ValueError(f'average_over_widths: {name}.{metric} is not a number: {value!r}')
        averages[set_name] = {m: float(np.mean([metrics[m] for _, metrics in entries])) for m in metric_names}
    for name, metrics in passthrough.items():
        averages.setdefault(name, metrics)
    return averages
