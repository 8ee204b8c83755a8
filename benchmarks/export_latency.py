"""Latency of the exported ONNX model in onnxruntime against our PyTorch eval forward, on the CPU, same input.

    .venv/bin/python benchmarks/export_latency.py [--variants ESRT,GRFormer-light] [--tiny] [--scale 4]
        [--sizes 64] [--threads 1] [--repeats 7] [--warmup 2] [--model CKPT]

Each network (a published variant with seeded random weights, the family's tiny configuration with ``--tiny``,
or a checkpoint with ``--model``) is exported as ``sr-arch export`` does (dynamic H and W, float32, opset 18;
the export time is printed too), then for each input size:

* PyTorch: ``net.eval()`` under ``torch.no_grad()``, ``torch.set_num_threads(--threads)``;
* onnxruntime: CPUExecutionProvider, ``intra_op_num_threads = --threads``, graph optimisations on (default);
* the same (1, 3, H, W) input; ``--warmup`` untimed runs of each, then ``--repeats`` timed rounds that alternate
  which of the two runs first (a shared machine's load hits both alike); the median and min per run are
  printed, with max |onnx - torch| and ``/proc/loadavg`` before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sr_arch  # noqa: E402,F401  (registers the archs; before any basicsr import)
from sr_arch import export  # noqa: E402
from sr_arch.archs import FAMILIES  # noqa: E402
from sr_arch.archs.spec import FamilySpec  # noqa: E402


def load_average() -> str:
    try:
        with open('/proc/loadavg') as f:
            return ' '.join(f.read().split()[:3])
    except OSError:
        return 'n/a'


def networks(args: argparse.Namespace) -> list[tuple[str, nn.Module, FamilySpec, dict[str, Any]]]:
    """(name, eval network, family record, constructor kwargs) to benchmark."""
    if args.model:
        from sr_arch.infer import load_model

        model = load_model(args.model)
        spec = FAMILIES[model.detection.family]
        return [(model.detection.describe(), model.net, spec, model.detection.kwargs)]
    out = []
    for variant in args.variants.split(','):
        spec = next((s for s in FAMILIES.values() if variant in s.variants), None)
        if spec is None:
            raise SystemExit(f'--variants: unknown variant {variant!r}; known: '
                             f'{", ".join(v for s in FAMILIES.values() for v in s.variants)}')
        torch.manual_seed(0)
        if args.tiny:
            kwargs, name = {**spec.tiny, 'upscale': args.scale}, f'{spec.name} tiny x{args.scale}'
        else:
            kwargs, name = spec.variant_kwargs(variant, args.scale), f'{variant} x{args.scale}'
        out.append((name, spec.cls(**kwargs).eval(), spec, kwargs))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', default='ESRT,GRFormer-light', help='published variants (comma-separated)')
    parser.add_argument('--tiny', action='store_true', help="the families' tiny configurations instead")
    parser.add_argument('--model', help='a checkpoint instead of --variants')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--sizes', default='64', help='LR input sides, e.g. 64,96x128')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split('x')) if 'x' in s else (int(s), int(s)) for s in args.sizes.split(',')]

    print(f'torch {torch.__version__}, {args.threads} thread(s), loadavg before: {load_average()}')
    header = ('| network | LR input | PyTorch eval ms (median / min) | onnxruntime ms (median / min) | '
              'onnxruntime / PyTorch | max abs diff | export s |')
    rows = []
    for name, net, spec, kwargs in networks(args):
        rules = spec.size_rules(kwargs)
        max_size = spec.max_traced_size(spec.full_kwargs(kwargs))
        start = time.perf_counter()
        model = export.trace_onnx(net, export.example_size(*rules), dynamic=True, max_size=max_size)
        export_seconds = time.perf_counter() - start
        session = export.onnx_session(model.SerializeToString())
        for height, width in sizes:
            x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                expected = net(x)
            diff = (export.run_onnx(session, x) - expected).abs().max().item()

            def run_torch() -> None:
                with torch.no_grad():
                    net(x)

            def run_onnx() -> None:
                export.run_onnx(session, x)

            for _ in range(args.warmup):
                run_torch()
                run_onnx()
            torch_times, onnx_times = [], []
            for repeat in range(args.repeats):
                first, second = (run_torch, run_onnx) if repeat % 2 == 0 else (run_onnx, run_torch)
                t_first, t_second = timed(first), timed(second)
                torch_time, onnx_time = (t_first, t_second) if first is run_torch else (t_second, t_first)
                torch_times.append(torch_time * 1e3)
                onnx_times.append(onnx_time * 1e3)
            torch_ms, onnx_ms = statistics.median(torch_times), statistics.median(onnx_times)
            rows.append(f'| {name} | {height}x{width} | {torch_ms:.1f} / {min(torch_times):.1f} | '
                        f'{onnx_ms:.1f} / {min(onnx_times):.1f} | {onnx_ms / torch_ms:.2f} | {diff:.2g} | '
                        f'{export_seconds:.0f} |')
            print(rows[-1], flush=True)
    print(f'loadavg after: {load_average()}')
    print()
    print(header)
    print('|---|---|---|---|---|---|---|')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
