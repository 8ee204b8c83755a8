"""Latency and peak memory of the SR networks: ours against the plain formulation of the same network.

    .venv/bin/python benchmarks/speed.py [--variants HAT-S,HAT,RGT-S,GRFormer-light,ESRT]
        [--sizes 64] [--memory-sizes 256] [--modes eval,train] [--devices cpu,cuda] [--dtypes fp32,bf16]
        [--regimes default,compute] [--scale 4] [--repeats 5] [--warmup 1] [--tiny] [--out experiments/benchmarks]

"ours" is the network as it ships (``F.scaled_dot_product_attention`` with the position bias and shift
mask as one additive mask, shift masks and eval-time bias tables cached per input size); "plain" is the
same network with the same weights inside ``layers.plain_formulation()``: plain
``softmax(q @ k^T * scale + bias) @ v`` and every mask / bias table rebuilt in every forward, as the
official code does.

* Latency: median over ``--repeats`` timed runs after ``--warmup`` untimed ones. Ours and plain are
  interleaved (alternating which goes first) so that load changes on a shared machine hit both alike.
  ``eval`` = ``net.eval()`` under ``torch.no_grad()``; ``train`` = ``net.train()``, forward, ``out.mean()``
  backward.
* Peak memory, CPU: each (variant, size, mode, formulation) runs once in a fresh subprocess; the number is
  ``ru_maxrss`` after the first forward (/backward) minus the resident set size just before it, i.e.
  the high-water mark the pass adds on top of the weights and input (mask/bias caches built in that pass
  included).
* Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` during the pass minus the allocation before it.
* Regimes (CPU latency, ``--regimes``): ``default`` runs the child process with the C allocator as it comes;
  ``compute`` pins glibc's allocator (``GLIBC_TUNABLES`` below) so freed memory stays in the process and no
  pass pays page faults for fresh allocations: compute only. On a VM the default regime's page faults swing
  from run to run and flatter whichever formulation allocates more.
* % of GEMM peak: the network's FLOPs (torch's flop counter on the plain formulation,
  ``sr_arch.utils.macs.network_macs``; 2 FLOPs per MAC) over the median latency, divided by the GEMM peak
  measured in the same child process, interleaved with the passes (the best of 1024^3 fp32 ``torch.mm`` runs,
  same threads, device and dtype).
* Every timed pass also records its process CPU time, and every child the load average before and after:
  on a shared machine wall times swing with other work, CPU time much less.

Writes ``speed.json`` (one record per configuration, plus the machine) and ``speed.md`` (a table)
under ``--out``. ``--tiny`` shrinks every variant (one or two small groups) for smoke tests.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

import sr_arch  # noqa: F401  (registers the archs; before any basicsr import)
from sr_arch.archs import FAMILIES
from sr_arch.archs.layers import plain_formulation
from sr_arch.archs.spec import FamilySpec

FORMULATIONS = ('ours', 'plain')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
#: ``default``: the C allocator as it comes; ``compute``: glibc keeps freed memory (no page faults per pass)
REGIMES = ('default', 'compute')
PINNED_ALLOCATOR = 'glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296'
#: side of the square fp32 matrices whose product measures the GEMM peak
GEMM_SIDE = 1024


def _variants() -> dict[str, tuple[FamilySpec, str]]:
    """Benchmark name (the published variant's name) -> (family spec, variant)."""
    return {name: (spec, name) for spec in FAMILIES.values() for name in spec.variants}


def build_network(variant: str, scale: int, tiny: bool = False, groups: int | None = None) -> nn.Module:
    """A published variant at ``scale`` with seeded random weights.

    ``tiny``: the family's tiny configuration instead. ``groups``: keep only the first ``groups`` residual groups
    (same layers, widths, windows and heads), a per-group proxy of the full network where a full run takes too
    long.
    """
    variants = _variants()
    if variant not in variants:
        raise KeyError(f'speed.py: unknown variant {variant!r}; known: {sorted(variants)}')
    spec, name = variants[variant]
    kwargs = spec.variant_kwargs(name, scale, **(spec.tiny if tiny else {}))
    if groups is not None:
        if not spec.group_args:
            raise ValueError(f'speed.py: --groups applies to networks with residual groups, not {variant!r}')
        kwargs.update({key: list(kwargs[key])[:groups] for key in spec.group_args})
    torch.manual_seed(0)
    return spec.cls(**kwargs)


def formulation_context(formulation: str) -> contextlib.AbstractContextManager:
    if formulation not in FORMULATIONS:
        raise ValueError(f'speed.py: formulation must be one of {FORMULATIONS}, got {formulation!r}')
    return plain_formulation() if formulation == 'plain' else contextlib.nullcontext()


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_pass(net: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """One eval forward (no_grad) or one train forward+backward; returns the (detached) output."""
    if mode == 'eval':
        net.eval()
        with torch.no_grad():
            return net(x)
    if mode == 'train':
        net.train()
        for p in net.parameters():
            p.grad = None
        out = net(x)
        out.float().mean().backward()
        return out.detach()
    raise ValueError(f'speed.py: mode must be eval or train, got {mode!r}')


def gemm_gflops(device: torch.device, dtype: torch.dtype, side: int = GEMM_SIDE, runs: int = 3) -> float:
    """GFLOP/s of the best of ``runs`` ``side``^3 matrix products on ``device`` in ``dtype`` (this process's
    threads): the GEMM peak the networks are compared with."""
    a, b = (torch.randn(side, side, device=device).to(dtype) for _ in range(2))
    out = torch.empty(side, side, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float('inf')
    for _ in range(runs):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * side ** 3 / best / 1e9


def time_interleaved(net: nn.Module, x: torch.Tensor, mode: str, repeats: int, warmup: int
                     ) -> tuple[dict[str, list[float]], float]:
    """Seconds per pass for ours and plain, interleaved; also their outputs' max abs difference.

    ``times`` also holds each formulation's process CPU seconds per pass (``<formulation>_cpu``) and the GEMM
    peak (GFLOP/s) measured before every repeat (``gemm``).
    """
    times: dict[str, list[float]] = {key: [] for f in FORMULATIONS for key in (f, f + '_cpu')}
    times['gemm'] = []
    outputs: dict[str, torch.Tensor] = {}
    for formulation in FORMULATIONS:
        for _ in range(warmup):
            with formulation_context(formulation):
                run_pass(net, x, mode)
    for r in range(repeats):
        times['gemm'].append(gemm_gflops(x.device, x.dtype))
        order = FORMULATIONS if r % 2 == 0 else FORMULATIONS[::-1]
        for formulation in order:
            with formulation_context(formulation):
                torch.manual_seed(r)  # same dropout / drop-path draws for both
                _synchronize(x.device)
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[formulation] = run_pass(net, x, mode)
                _synchronize(x.device)
                times[formulation].append(time.perf_counter() - start)
                times[formulation + '_cpu'].append(time.process_time() - start_cpu)
    diff = (outputs['ours'].float() - outputs['plain'].float()).abs().max().item()
    return times, diff


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def peak_memory_in_process(net: nn.Module, x: torch.Tensor, mode: str, formulation: str) -> int:
    """Bytes the pass adds at its peak: CUDA allocator on GPU, ru_maxrss (call in a fresh process) on CPU."""
    with formulation_context(formulation):
        if x.device.type == 'cuda':
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            before = torch.cuda.memory_allocated(x.device)
            run_pass(net, x, mode)
            torch.cuda.synchronize(x.device)
            return torch.cuda.max_memory_allocated(x.device) - before
        before = _rss_bytes()
        run_pass(net, x, mode)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _prepare(config: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    if config.get('threads'):
        torch.set_num_threads(config['threads'])
    device = torch.device(config['device'])
    dtype = DTYPES[config['dtype']]
    net = build_network(config['variant'], config['scale'], config['tiny'], config.get('groups'))
    net = net.to(device=device, dtype=dtype)
    torch.manual_seed(1)
    x = torch.rand(1, 3, config['size'], config['size'], device=device).to(dtype)
    return net, x


def child_environment(regime: str) -> dict[str, str]:
    """The environment of a child process in ``regime`` (``compute``: glibc allocator pinned)."""
    if regime not in REGIMES:
        raise ValueError(f'speed.py: regime must be one of {REGIMES}, got {regime!r}')
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    if regime == 'compute':
        env['GLIBC_TUNABLES'] = PINNED_ALLOCATOR
    return env


def run_child(flag: str, request: dict[str, Any], what: str, regime: str = 'default') -> Any:
    """``speed.py <flag> <request as JSON>`` in a fresh interpreter (environment of ``regime``); the JSON on its
    last output line, or None."""
    proc = subprocess.run([sys.executable, __file__, flag, json.dumps(request)], capture_output=True, text=True,
                          env=child_environment(regime))
    if proc.returncode != 0:
        print(f'  {what} child failed: {proc.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_peak_memory_subprocess(config: dict[str, Any], formulation: str) -> int | None:
    """Run ``peak_memory_in_process`` for one configuration in a fresh interpreter; None if it failed."""
    return run_child('--memory-child', {**config, 'formulation': formulation}, f'memory ({formulation})')


def _memory_child(config_json: str) -> None:
    config = json.loads(config_json)
    net, x = _prepare(config)
    print(peak_memory_in_process(net, x, config['mode'], config['formulation']))


def latency_in_process(config: dict[str, Any], repeats: int, warmup: int) -> dict[str, Any]:
    """ours/plain median latency (s), all timings, CPU times, the GEMM peak and the outputs' max abs difference,
    in this process."""
    load_before = os.getloadavg()
    net, x = _prepare(config)
    times, diff = time_interleaved(net, x, config['mode'], repeats, warmup)
    result: dict[str, Any] = {}
    for formulation in FORMULATIONS:
        result[f'{formulation}_s'] = statistics.median(times[formulation])
        result[f'{formulation}_all_s'] = times[formulation]
        result[f'{formulation}_cpu_s'] = statistics.median(times[formulation + '_cpu'])
        result[f'{formulation}_cpu_all_s'] = times[formulation + '_cpu']
    result['speedup'] = result['plain_s'] / result['ours_s']
    result['max_abs_diff'] = diff
    result['gemm_peak_gflops'] = max(times['gemm'])
    result['gemm_all_gflops'] = times['gemm']
    result['threads'] = torch.get_num_threads()
    result['allocator_pinned'] = os.environ.get('GLIBC_TUNABLES') == PINNED_ALLOCATOR
    result['load_avg'] = [load_before[0], os.getloadavg()[0]]
    return result


def latency_subprocess(config: dict[str, Any], repeats: int, warmup: int) -> dict[str, Any]:
    """``latency_in_process`` in a fresh interpreter in ``config['regime']``: the C allocator's state (glibc
    raises its mmap threshold after large frees, which makes later large allocations skip page faults) then
    depends on this network only, not on the networks measured before it."""
    return run_child('--latency-child', dict(config=config, repeats=repeats, warmup=warmup), 'latency',
                     config.get('regime', 'default')) or {}


def network_gflop(config: dict[str, Any]) -> float | None:
    """GFLOPs of one forward of the configuration's network (plain formulation, torch's flop counter, on a meta
    copy); None if the count fails."""
    from sr_arch.utils.macs import network_macs

    try:
        with torch.device('meta'):
            net = build_network(config['variant'], config['scale'], config['tiny'], config.get('groups'))
        return 2 * network_macs(net, (1, 3, config['size'], config['size'])).total / 1e9
    except Exception as err:  # noqa: BLE001  (a benchmark row without the column is better than none)
        print(f'  FLOP count failed: {err}', file=sys.stderr)
        return None


def add_peak_fractions(record: dict[str, Any]) -> dict[str, Any]:
    """``<formulation>_pct_peak``: the FLOPs per median pass as a percentage of the GEMM peak, where measured."""
    flops, peak = record.get('gflop'), record.get('gemm_peak_gflops')
    for formulation in FORMULATIONS:
        seconds = record.get(f'{formulation}_s')
        if flops and peak and seconds:
            record[f'{formulation}_pct_peak'] = 100 * flops / seconds / peak
    return record


def _latency_child(request_json: str) -> None:
    request = json.loads(request_json)
    print(json.dumps(latency_in_process(request['config'], request['repeats'], request['warmup'])))


def benchmark(config: dict[str, Any], repeats: int, warmup: int, latency: bool, memory: bool) -> dict[str, Any]:
    """One record: config + ours/plain median latency (s), all timings, output diff, peak memory (bytes)."""
    record: dict[str, Any] = dict(config)
    if latency:
        run = latency_subprocess if config['device'] == 'cpu' else latency_in_process
        record.update(run(config, repeats, warmup))
        if config['mode'] == 'eval':
            record['gflop'] = network_gflop(config)
            add_peak_fractions(record)
    if memory:
        for formulation in FORMULATIONS:
            if config['device'] == 'cpu':
                record[f'{formulation}_peak_bytes'] = cpu_peak_memory_subprocess(config, formulation)
            else:
                net, x = _prepare(config)
                record[f'{formulation}_peak_bytes'] = peak_memory_in_process(net, x, config['mode'], formulation)
                del net, x
                torch.cuda.empty_cache()
    return record


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = dict(torch=torch.__version__, python=platform.python_version(),
                                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                                torch_threads=torch.get_num_threads(), load_avg_start=os.getloadavg())
    if torch.cuda.is_available():
        info['cuda_device'] = torch.cuda.get_device_name(0)
    return info


def _fmt_ms(seconds: float | None) -> str:
    return '' if seconds is None else f'{seconds * 1e3:.1f}'


def _fmt_mib(num_bytes: int | None) -> str:
    return '' if num_bytes is None else f'{num_bytes / 2 ** 20:.0f}'


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
    return '' if value is None else f'{value:{spec}}{suffix}'


def markdown_table(records: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']}"
             f"{', ' + machine['cuda_device'] if 'cuda_device' in machine else ''}; "
             f"load average at start {machine['load_avg_start'][0]:.1f}, at end {machine['load_avg_end'][0]:.1f}.",
             '',
             '| variant | x | LR | mode | device | dtype | regime | ours ms | plain ms | speedup | ours CPU ms '
             '| plain CPU ms | GFLOP | GEMM peak GFLOP/s | ours % of GEMM peak | plain % of GEMM peak | load '
             '| ours peak MiB | plain peak MiB | max abs diff |',
             '|' + '---|' * 20]
    for r in records:
        speedup = f"{r['speedup']:.2f}x" if 'speedup' in r else ''
        diff = f"{r['max_abs_diff']:.1e}" if 'max_abs_diff' in r else ''
        groups = f" ({r['groups']} group{'s' if r['groups'] > 1 else ''})" if r.get('groups') else ''
        load = '-'.join(f'{v:.1f}' for v in r['load_avg']) if r.get('load_avg') else ''
        name = f"{r['variant']}{' (tiny)' if r['tiny'] else ''}{groups}"
        lines.append(f"| {name} | {r['scale']} | {r['size']} | {r['mode']} "
                     f"| {r['device']} | {r['dtype']} | {r.get('regime', '')} "
                     f"| {_fmt_ms(r.get('ours_s'))} | {_fmt_ms(r.get('plain_s'))} | {speedup} "
                     f"| {_fmt_ms(r.get('ours_cpu_s'))} | {_fmt_ms(r.get('plain_cpu_s'))} "
                     f"| {_fmt(r.get('gflop'), '.1f')} "
                     f"| {_fmt(r.get('gemm_peak_gflops'), '.0f')} | {_fmt(r.get('ours_pct_peak'), '.0f', ' %')} "
                     f"| {_fmt(r.get('plain_pct_peak'), '.0f', ' %')} | {load} "
                     f"| {_fmt_mib(r.get('ours_peak_bytes'))} | {_fmt_mib(r.get('plain_peak_bytes'))} | {diff} |")
    return '\n'.join(lines) + '\n'


def _csv(value: str) -> list[str]:
    return [v for v in value.split(',') if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', type=_csv, default=list(_variants()), help='default: every published variant')
    parser.add_argument('--sizes', type=lambda s: [int(v) for v in _csv(s)], default=[64],
                        help='LR sizes (square) timed')
    parser.add_argument('--memory-sizes', type=lambda s: [int(v) for v in _csv(s)], default=[256],
                        help='LR sizes whose peak memory is measured (the --sizes are measured too)')
    parser.add_argument('--modes', type=_csv, default=['eval', 'train'])
    parser.add_argument('--devices', type=_csv, default=['cpu', 'cuda'],
                        help='cuda is skipped when not available')
    parser.add_argument('--dtypes', type=_csv, default=['fp32', 'bf16'], help='bf16 runs on CUDA only')
    parser.add_argument('--regimes', type=_csv, default=list(REGIMES),
                        help='CPU latency regimes: default (allocator as it comes), compute (glibc allocator pinned)')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--tiny', action='store_true', help='shrunken variants (smoke test)')
    parser.add_argument('--groups', type=int,
                        help='keep only the first N residual groups (families whose spec has group_args)')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch\'s choice)')
    parser.add_argument('--out', type=Path, default=Path('experiments/benchmarks'))
    parser.add_argument('--memory-child', help=argparse.SUPPRESS)
    parser.add_argument('--latency-child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    known = _variants()
    for name in args.variants:
        if name not in known:
            parser.error(f'--variants: unknown variant {name!r}; known: {sorted(known)}')
    for mode in args.modes:
        if mode not in ('eval', 'train'):
            parser.error(f'--modes: {mode!r} is not eval or train')
    for dtype in args.dtypes:
        if dtype not in DTYPES:
            parser.error(f'--dtypes: {dtype!r} is not one of {sorted(DTYPES)}')
    for device in args.devices:
        if device not in ('cpu', 'cuda'):
            parser.error(f'--devices: {device!r} is not cpu or cuda')
    for regime in args.regimes:
        if regime not in REGIMES:
            parser.error(f'--regimes: {regime!r} is not one of {", ".join(REGIMES)}')
    if not args.regimes:
        parser.error('--regimes: give at least one of ' + ', '.join(REGIMES))
    return args


def configurations(args: argparse.Namespace) -> Iterator[tuple[dict[str, Any], bool, bool]]:
    devices = [d for d in args.devices if d == 'cpu' or torch.cuda.is_available()]
    sizes = sorted(set(args.sizes) | (set() if args.no_memory else set(args.memory_sizes)))
    for device in devices:
        for dtype in args.dtypes:
            if device == 'cpu' and dtype != 'fp32':
                continue
            for variant in args.variants:
                for size in sizes:
                    for mode in args.modes:
                        config = dict(variant=variant, scale=args.scale, size=size, mode=mode, device=device,
                                      dtype=dtype, tiny=args.tiny, groups=args.groups, threads=args.threads)
                        # CUDA latency and all memory runs do not depend on the host allocator: one regime
                        regimes = args.regimes if device == 'cpu' and size in args.sizes else args.regimes[:1]
                        for i, regime in enumerate(regimes):
                            yield ({**config, 'regime': regime if device == 'cpu' else 'default'},
                                   size in args.sizes, not args.no_memory and i == 0)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args.memory_child)
        return []
    if args.latency_child:
        _latency_child(args.latency_child)
        return []
    machine = machine_info()
    records: list[dict[str, Any]] = []
    table = markdown_table(records, {**machine, 'load_avg_end': machine['load_avg_start']})
    args.out.mkdir(parents=True, exist_ok=True)
    for config, latency, memory in configurations(args):
        records.append(benchmark(config, args.repeats, args.warmup, latency, memory))
        machine['load_avg_end'] = os.getloadavg()
        # rewritten after every configuration, so a long run that is stopped keeps what it measured
        (args.out / 'speed.json').write_text(json.dumps(dict(machine=machine, records=records), indent=1))
        table = markdown_table(records, machine)
        (args.out / 'speed.md').write_text(table)
        print(table.splitlines()[-1], flush=True)
    print(table)
    return records


if __name__ == '__main__':
    main()
