"""Benchmark results of the test pipeline: per-image records and the tables written under ``results/<name>/``.

Files (``write_results``):

* ``summary.md``: a Markdown table (dataset, images, one column per metric, seconds per image), then
  one per-image table per dataset;
* ``summary.csv``: ``dataset,images,<metric>...,seconds_per_image``;
* ``summary.json``: ``{dataset_name: {metric: mean value}}`` (the contract other tools read, e.g.
  ``sr_arch.data.gaussian8.average_over_widths``);
* ``per_image.csv``: ``dataset,image,<metric>...,seconds``; ``per_image.json``:
  ``{dataset_name: {image_name: {metric: value, 'seconds': s}}}``.

``write_set_averages`` adds ``summary_by_set.{json,csv}`` and a section of ``summary.md`` for datasets
that are parts of one benchmark set (LabNet's Gaussian8: one dataset per kernel width).

Per-image tables list images in natural name order (``img_2`` before ``img_10``), whatever order the
file system or the ranks gave them. ``paper_table`` / ``write_paper_table`` make the table of a paper:
one row per model, one column per set with ``PSNR / SSIM``, published rows and differences
(``paper.md`` / ``paper.json``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field

from sr_arch.utils.files import atomic_write_text

#: how metrics are named in table headers
METRIC_TITLES = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM', 'niqe': 'NIQE'}


@dataclass
class ImageResult:
    """One image: metric name -> value (empty without GT) and inference seconds."""

    name: str
    metrics: dict[str, float]
    seconds: float


@dataclass
class DatasetResult:
    """All images of one test dataset, in test order."""

    name: str
    images: list[ImageResult] = field(default_factory=list)

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for image in self.images:
            names += [m for m in image.metrics if m not in names]
        return names

    def averages(self) -> dict[str, float]:
        """Mean of each metric over the images that have it."""
        means = {}
        for metric in self.metric_names():
            values = [image.metrics[metric] for image in self.images if metric in image.metrics]
            means[metric] = sum(values) / len(values)
        return means

    def seconds_per_image(self) -> float:
        return sum(image.seconds for image in self.images) / max(1, len(self.images))

    def images_by_name(self) -> list[ImageResult]:
        """The images in natural name order (digit runs compared as numbers)."""
        return sorted(self.images, key=lambda image: natural_key(image.name))


def natural_key(name: str) -> list:
    """Sort key that orders 'img_2' before 'img_10' (digit runs compared as numbers, case ignored)."""
    return [(0, int(part), '') if part.isdigit() else (1, 0, part.lower()) for part in re.split(r'(\d+)', name)]


def _metric_columns(datasets: list[DatasetResult]) -> list[str]:
    names: list[str] = []
    for dataset in datasets:
        names += [m for m in dataset.metric_names() if m not in names]
    return names


def _format(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.4f}' if metric != 'psnr' else f'{value:.2f}'


def markdown_table(datasets: list[DatasetResult], title: str | None = None) -> str:
    """Summary table, then a per-image table for each dataset."""
    metrics = _metric_columns(datasets)
    header = ['Dataset', 'Images'] + [METRIC_TITLES.get(m, m) for m in metrics] + ['s / image']
    lines = [f'# {title}', ''] if title else []
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for dataset in datasets:
        means = dataset.averages()
        row = [dataset.name, str(len(dataset.images))] + [_format(means.get(m), m) for m in metrics]
        lines.append('| ' + ' | '.join(row + [f'{dataset.seconds_per_image():.3f}']) + ' |')
    for dataset in datasets:
        names = dataset.metric_names()
        lines += ['', f'## {dataset.name}', '',
                  '| Image | ' + ' | '.join([METRIC_TITLES.get(m, m) for m in names] + ['s']) + ' |',
                  '|' + '---|' * (len(names) + 2)]
        for image in dataset.images_by_name():
            cells = [_format(image.metrics.get(m), m) for m in names] + [f'{image.seconds:.3f}']
            lines.append(f'| {image.name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def summary_csv(datasets: list[DatasetResult]) -> str:
    metrics = _metric_columns(datasets)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['dataset', 'images'] + metrics + ['seconds_per_image'])
    for dataset in datasets:
        means = dataset.averages()
        writer.writerow([dataset.name, len(dataset.images)] + [repr(means[m]) if m in means else '' for m in metrics]
                        + [repr(dataset.seconds_per_image())])
    return out.getvalue()


def per_image_csv(datasets: list[DatasetResult]) -> str:
    metrics = _metric_columns(datasets)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['dataset', 'image'] + metrics + ['seconds'])
    for dataset in datasets:
        for image in dataset.images_by_name():
            writer.writerow([dataset.name, image.name]
                            + [repr(image.metrics[m]) if m in image.metrics else '' for m in metrics]
                            + [repr(image.seconds)])
    return out.getvalue()


def summary_dict(datasets: list[DatasetResult]) -> dict[str, dict[str, float]]:
    """``{dataset_name: {metric: mean}}``."""
    return {dataset.name: dataset.averages() for dataset in datasets}


def per_image_dict(datasets: list[DatasetResult]) -> dict[str, dict[str, dict[str, float]]]:
    return {dataset.name: {image.name: {**image.metrics, 'seconds': image.seconds}
                           for image in dataset.images_by_name()}
            for dataset in datasets}


def write_results(folder: str, datasets: list[DatasetResult], title: str | None = None) -> dict[str, str]:
    """Write the five result files into ``folder``; returns ``{kind: path}``."""
    os.makedirs(folder, exist_ok=True)
    contents = {
        'summary.md': markdown_table(datasets, title),
        'summary.csv': summary_csv(datasets),
        'summary.json': json.dumps(summary_dict(datasets), indent=2) + '\n',
        'per_image.csv': per_image_csv(datasets),
        'per_image.json': json.dumps(per_image_dict(datasets), indent=2) + '\n',
    }
    paths = {}
    for filename, text in contents.items():
        paths[filename] = os.path.join(folder, filename)
        atomic_write_text(paths[filename], text)
    return paths


def write_set_averages(folder: str, averages: dict[str, dict[str, float]], heading: str) -> dict[str, str]:
    """``summary_by_set.json`` / ``.csv`` ({set: {metric: value}}) and a table appended to ``summary.md``."""
    metrics: list[str] = []
    for values in averages.values():
        metrics += [m for m in values if m not in metrics]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['set'] + metrics)
    for name, values in averages.items():
        writer.writerow([name] + [repr(values[m]) if m in values else '' for m in metrics])
    lines = ['', f'## {heading}', '', '| Set | ' + ' | '.join(METRIC_TITLES.get(m, m) for m in metrics) + ' |',
             '|' + '---|' * (len(metrics) + 1)]
    lines += [f'| {name} | ' + ' | '.join(_format(values.get(m), m) for m in metrics) + ' |'
              for name, values in averages.items()]
    paths = {'summary_by_set.json': os.path.join(folder, 'summary_by_set.json'),
             'summary_by_set.csv': os.path.join(folder, 'summary_by_set.csv')}
    atomic_write_text(paths['summary_by_set.json'], json.dumps(averages, indent=2) + '\n')
    atomic_write_text(paths['summary_by_set.csv'], out.getvalue())
    markdown = os.path.join(folder, 'summary.md')
    with open(markdown, 'a', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return paths


# ---------------------------------------------------------------------------------------------- paper table

#: a row's values: set -> {'psnr': value or None, 'ssim': value or None}
SetValues = dict[str, dict[str, 'float | None']]


@dataclass
class PaperRow:
    """One row of a paper table. ``kind``: 'ours' (measured), 'published' or 'difference' (ours - published)."""

    label: str
    scale: int
    values: SetValues
    kind: str = 'ours'
    note: str = ''


def difference_row(ours: PaperRow, published: PaperRow, label: str = 'difference') -> PaperRow:
    """ours - published per set and metric (None where either is missing)."""
    values: SetValues = {}
    for set_name in ours.values.keys() | published.values.keys():
        mine, theirs = ours.values.get(set_name, {}), published.values.get(set_name, {})
        values[set_name] = {metric: (mine[metric] - theirs[metric]
                                     if mine.get(metric) is not None and theirs.get(metric) is not None else None)
                            for metric in ('psnr', 'ssim')}
    return PaperRow(label, ours.scale, values, 'difference')


def _paper_cell(values: dict[str, 'float | None'] | None, signed: bool) -> str:
    if not values or all(values.get(m) is None for m in ('psnr', 'ssim')):
        return '-'
    psnr, ssim = values.get('psnr'), values.get('ssim')
    sign = '+' if signed else ''
    psnr_text = '-' if psnr is None else f'{psnr:{sign}.2f}'
    ssim_text = '-' if ssim is None else f'{ssim:{sign}.4f}'
    return f'{psnr_text} / {ssim_text}'


def paper_table(rows: list[PaperRow], sets: list[str], title: str | None = None) -> str:
    """Markdown: ``| Method | Scale | <set> PSNR / SSIM ... |``, one line per row, notes below the table."""
    lines = [f'# {title}', ''] if title else []
    header = ['Method', 'Scale'] + [f'{name} PSNR / SSIM' for name in sets]
    lines += ['| ' + ' | '.join(header) + ' |', '|---|---|' + '---|' * len(sets)]
    notes = []
    for row in rows:
        label = f'*{row.label}*' if row.kind == 'difference' else row.label
        if row.note:
            notes.append(f'- {row.label}: {row.note}')
        cells = [_paper_cell(row.values.get(name), row.kind == 'difference') for name in sets]
        lines.append('| ' + ' | '.join([label, f'x{row.scale}'] + cells) + ' |')
    if notes:
        lines += [''] + notes
    return '\n'.join(lines) + '\n'


def write_paper_table(folder: str, rows: list[PaperRow], sets: list[str], title: str | None = None
                      ) -> dict[str, str]:
    """``paper.md`` (the table) and ``paper.json`` (``{"sets": [...], "rows": [...]}``) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    paths = {'paper.md': os.path.join(folder, 'paper.md'), 'paper.json': os.path.join(folder, 'paper.json')}
    atomic_write_text(paths['paper.md'], paper_table(rows, sets, title))
    atomic_write_text(paths['paper.json'], json.dumps({'title': title, 'sets': sets, 'rows': [asdict(r) for r in rows]},
                                                indent=2, ensure_ascii=False) + '\n')
    return paths
