"""Does ``torch.compile`` pay for eval on this machine? Compile time and latency, compiled vs eager.

    .venv/bin/python benchmarks/compile_eval.py [--variants GRFormer-light,ESRT] [--size 64] [--scale 4]
        [--backend inductor] [--no-freezing] [--repeats 5] [--threads N] [--tiny]

Eager is the network as it ships (its lean eval paths); the compiled module traces the network, so the lean paths
step aside (``layers.tracing()``) and the compiler sees the official formulation, which it fuses itself
(``torch._inductor.config.freezing`` folds the weights in as constants unless ``--no-freezing``). Prints, per
variant, the wall seconds of the first compiled call (the compile), and the best of ``--repeats`` process-CPU and
wall times of eager and compiled calls, interleaved, plus their outputs' max abs difference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import build_network  # noqa: E402

import sr_arch  # noqa: E402,F401  (registers the archs)


def measure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.freezing = not args.no_freezing
    net = build_network(variant, args.scale, args.tiny).eval()
    torch.manual_seed(1)
    x = torch.rand(1, 3, args.size, args.size)
    with torch.no_grad():
        start = time.perf_counter()
        compiled = torch.compile(net, backend=args.backend, dynamic=False)
        out_compiled = compiled(x)
        compile_s = time.perf_counter() - start
        out_eager = net(x)
        best = {name: [float('inf'), float('inf')] for name in ('eager', 'compiled')}
        for _ in range(args.repeats):
            for name, fn in (('eager', net), ('compiled', compiled)):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(x)
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    torch._dynamo.reset()
    return dict(variant=variant, size=args.size, scale=args.scale, backend=args.backend, freezing=not args.no_freezing,
                compile_s=compile_s, eager_s=best['eager'][0], eager_cpu_s=best['eager'][1],
                compiled_s=best['compiled'][0], compiled_cpu_s=best['compiled'][1],
                max_abs_diff=(out_compiled - out_eager).abs().max().item(), threads=torch.get_num_threads(),
                load_avg=os.getloadavg()[0])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', type=lambda s: [v for v in s.split(',') if v],
                        default=['GRFormer-light', 'ESRT'])
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--no-freezing', action='store_true')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int)
    parser.add_argument('--tiny', action='store_true')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    print('| network | backend | compile s | eager ms (CPU ms) | compiled ms (CPU ms) | max abs diff | load |')
    print('|---|---|---|---|---|---|---|')
    for variant in args.variants:
        r = measure(variant, args)
        records.append(r)
        print(f"| {variant}{' (tiny)' if args.tiny else ''} | {r['backend']}{' + freezing' if r['freezing'] else ''} "
              f"| {r['compile_s']:.0f} | {r['eager_s'] * 1e3:.0f} ({r['eager_cpu_s'] * 1e3:.0f}) "
              f"| {r['compiled_s'] * 1e3:.0f} ({r['compiled_cpu_s'] * 1e3:.0f}) | {r['max_abs_diff']:.1e} "
              f"| {r['load_avg']:.1f} |", flush=True)
    print(json.dumps(records))
    return records


if __name__ == '__main__':
    main()
