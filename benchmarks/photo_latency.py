"""Real-photo inference the way ``sr-arch infer`` runs it: whole image and ``--tile auto``, ours against plain.

    .venv/bin/python benchmarks/photo_latency.py [--variants HAT-S,GRFormer-light] [--scale 4] [--size 512]
        [--photo astronaut] [--tile-pad 32] [--regimes compute] [--threads N] [--tiny] [--out DIR]

A scikit-image photo (``astronaut`` is 512x512), centre-cropped to ``--size``, is the LR input of each published
variant (seeded random weights; the cost does not depend on the values) at ``--scale``. Per variant, each in a
fresh process (so peak memory and the allocator start clean):

* ours, ``--tile auto``: the tile the CPU auto-tiler picks (``sr_arch.utils.tiling.fastest_tile_size``), the
  time it spent deciding (probe passes) and the time of the tiled run;
* ours, whole image;
* plain (``plain_formulation()``: the official formulation), whole image and through the tile ours chose.

Each row: wall and process CPU seconds of the run (``super_resolve`` as in ``sr-arch infer``, no_grad), peak
resident memory the run adds (``ru_maxrss`` minus the resident set before it), the load average before and after,
and for plain rows the max abs difference to ours through the same tiling. ``--regimes``: ``compute`` pins
glibc's allocator (see ``benchmarks/speed.py``), ``default`` leaves it as it comes. Writes ``photo_latency.json``
and ``photo_latency.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import (  # noqa: E402
    REGIMES,
    _fmt,
    _fmt_mib,
    _variants,
    build_network,
    child_environment,
    formulation_context,
)

import sr_arch  # noqa: E402,F401  (registers the archs)

DEFAULT_VARIANTS = ('HAT-S', 'GRFormer-light')


def load_photo(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 1]: the centre crop of a scikit-image photo."""
    import skimage.data

    if not callable(getattr(skimage.data, name, None)):
        raise ValueError(f'photo_latency.py: --photo {name!r} is not a scikit-image photo (skimage.data.<name>)')
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f'photo_latency.py: --photo {name} is {h}x{w}, smaller than --size {size}')
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(image[top:top + size, left:left + size, :3])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0


def pad_multiple(variant: str, scale: int, tiny: bool) -> int:
    """The multiple tile sides are rounded to (the family's ``size_rules``, as ``sr-arch infer`` uses)."""
    spec, name = _variants()[variant]
    return spec.size_rules(spec.variant_kwargs(name, scale, **(spec.tiny if tiny else {}))).pad_multiple


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def run_in_process(request: dict[str, Any], fresh_process: bool = False) -> dict[str, Any]:
    """One configuration: ``formulation`` x ``tile`` ('auto', an int, or None for the whole image).

    ``peak_bytes`` (the growth of the process's peak RSS) only means something in a fresh process: otherwise it is
    None (an earlier row or the imports may already have set the peak).
    """
    from sr_arch.models.inference import super_resolve
    from sr_arch.utils.tiling import TileOptions, Tiler

    if request.get('threads'):
        torch.set_num_threads(request['threads'])
    torch.manual_seed(0)
    net = build_network(request['variant'], request['scale'], request['tiny']).eval()
    lq = load_photo(request['photo'], request['size'])
    tile = request['tile']
    tiler = None
    if tile is not None:
        options = TileOptions.from_opt({'tile_size': tile, 'tile_pad': request['tile_pad']}, '--tile')
        tiler = Tiler(options, multiple=pad_multiple(request['variant'], request['scale'], request['tiny']))
    result: dict[str, Any] = {'load_avg': [os.getloadavg()[0]]}
    with formulation_context(request['formulation']), torch.no_grad():
        before = _rss_bytes()
        if tiler is not None and tile == 'auto':
            start, start_cpu = time.perf_counter(), time.process_time()
            tiler.resolve_tile_size(net, lq)
            result['decide_s'] = time.perf_counter() - start
            result['decide_cpu_s'] = time.process_time() - start_cpu
            result['predicted_s'] = {str(k): v for k, v in tiler.choice.predicted.items()}
            result['whole_side'] = tiler.choice.whole
        start, start_cpu = time.perf_counter(), time.process_time()
        out = super_resolve(net, lq, request['scale'], tiler)
        result['run_s'] = time.perf_counter() - start
        result['run_cpu_s'] = time.process_time() - start_cpu
        peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        result['peak_bytes'] = peak_growth if fresh_process else None
    result['tile_used'] = tiler.tile_size if tiler is not None else None
    result['threads'] = torch.get_num_threads()
    result['load_avg'].append(os.getloadavg()[0])
    if request.get('save'):
        torch.save(out, request['save'])
    return result


def run_child(request: dict[str, Any], regime: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, '--child', json.dumps(request)], capture_output=True, text=True,
                          env=child_environment(regime))
    if proc.returncode != 0:
        print(f"  child failed ({request['formulation']}, tile {request['tile']}): "
              f'{proc.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark_variant(variant: str, args: argparse.Namespace, regime: str, scratch: str) -> list[dict[str, Any]]:
    """The four rows of one variant: ours auto, ours whole, plain whole, plain through ours' tile."""
    base = dict(variant=variant, scale=args.scale, tiny=args.tiny, photo=args.photo, size=args.size,
                tile_pad=args.tile_pad, threads=args.threads)
    rows = []
    outputs: dict[tuple[str, Any], str] = {}

    def run(formulation: str, tile: Any, label: str) -> dict[str, Any]:
        save = os.path.join(scratch, f'{variant}-{formulation}-{tile}.pt')
        record = dict(base, formulation=formulation, tile=tile, tiling=label, regime=regime)
        request = dict(record, save=save)
        record.update(run_in_process(request) if args.in_process else run_child(request, regime))
        outputs[(formulation, record.get('tile_used'))] = save
        rows.append(record)
        print(f"  {variant} {formulation} {label}: {record.get('run_s', float('nan')):.2f} s", flush=True)
        return record

    auto = run('ours', 'auto', 'auto')
    chosen = auto.get('tile_used')
    run('ours', None, 'whole')
    run('plain', None, 'whole')
    if chosen is not None and chosen < auto.get('whole_side', chosen + 1):
        run('plain', chosen, f'tile {chosen} (ours auto)')
    for record in rows:
        if record['formulation'] != 'plain':
            continue
        ours = outputs.get(('ours', record.get('tile_used')))
        mine = outputs.get(('plain', record.get('tile_used')))
        if ours and mine and os.path.exists(ours) and os.path.exists(mine):
            record['max_abs_diff_vs_ours'] = (torch.load(ours) - torch.load(mine)).abs().max().item()
    return rows


def _tile_name(record: dict[str, Any]) -> str:
    tile = record.get('tile_used')
    return 'whole' if tile is None or tile == record.get('whole_side') else str(tile)


def markdown_table(records: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
             f"{machine['threads']} threads; photo {machine['photo']} {machine['size']}x{machine['size']}, "
             f"x{machine['scale']}.",
             '',
             '| network | formulation | tiling | tile | regime | decide s | run s | total s | run CPU s | peak MiB '
             '| load | max abs diff vs ours |',
             '|' + '---|' * 12]
    for r in records:
        decide = r.get('decide_s')
        total = (r.get('run_s') or 0) + (decide or 0) if r.get('run_s') is not None else None
        load = '-'.join(f'{v:.1f}' for v in r.get('load_avg', []))
        diff = f"{r['max_abs_diff_vs_ours']:.1e}" if 'max_abs_diff_vs_ours' in r else ''
        lines.append(f"| {r['variant']}{' (tiny)' if r['tiny'] else ''} | {r['formulation']} | {r['tiling']} "
                     f"| {_tile_name(r)} | {r['regime']} | {_fmt(decide, '.2f')} | {_fmt(r.get('run_s'), '.2f')} "
                     f"| {_fmt(total, '.2f')} | {_fmt(r.get('run_cpu_s'), '.2f')} | {_fmt_mib(r.get('peak_bytes'))} "
                     f"| {load} | {diff} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', type=lambda s: [v for v in s.split(',') if v], default=list(DEFAULT_VARIANTS))
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--size', type=int, default=512, help='LR side (centre crop of the photo)')
    parser.add_argument('--photo', default='astronaut', help='a scikit-image photo (skimage.data.<name>)')
    parser.add_argument('--tile-pad', type=int, default=32, help='tile overlap in LR pixels (sr-arch infer: 32)')
    parser.add_argument('--regimes', type=lambda s: [v for v in s.split(',') if v], default=['compute'])
    parser.add_argument('--threads', type=int, help='torch.set_num_threads in the children')
    parser.add_argument('--tiny', action='store_true', help="the families' tiny configurations (smoke test)")
    parser.add_argument('--out', type=Path, default=Path('experiments/benchmarks'))
    parser.add_argument('--in-process', action='store_true',
                        help='run every configuration in this process (quick looks and tests: no peak memory '
                        'then, and --regimes only labels the rows)')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for regime in args.regimes:
        if regime not in REGIMES:
            parser.error(f'--regimes: {regime!r} is not one of {", ".join(REGIMES)}')
    if args.child is None:
        try:
            load_photo(args.photo, args.size)  # a bad --photo / --size fails here, in one line
        except ValueError as err:
            parser.error(str(err))
        for variant in args.variants:
            try:
                with torch.device('meta'):
                    build_network(variant, args.scale, args.tiny)
            except (KeyError, ValueError) as err:
                parser.error(f'--variants: {err}')
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_in_process(json.loads(args.child), fresh_process=True)))
        return []
    machine = dict(torch=torch.__version__, cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                   threads=args.threads or torch.get_num_threads(), photo=args.photo, size=args.size, scale=args.scale,
                   load_avg_start=os.getloadavg())
    records: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for regime in args.regimes:
            for variant in args.variants:
                records += benchmark_variant(variant, args, regime, scratch)
                machine['load_avg_end'] = os.getloadavg()
                (args.out / 'photo_latency.json').write_text(json.dumps(dict(machine=machine, records=records),
                                                                        indent=1))
                (args.out / 'photo_latency.md').write_text(markdown_table(records, machine))
    print(markdown_table(records, machine))
    return records


if __name__ == '__main__':
    main()
