"""How close to the GEMM peak can a network get while its attention runs on torch's CPU attention kernel?

    .venv/bin/python benchmarks/attention_ceiling.py [--variants GRFormer-light,ESRT,LabNet] [--size 64]
        [--scale 4] [--threads 2] [--repeats 3] [--tiny]

Profiles one eval forward (``torch.profiler``, input shapes recorded) of each variant as it ships, sums the FLOPs and
time of its attention calls (``aten::_scaled_dot_product_flash_attention_for_cpu``: 4*B*heads*Nq*Nk*head_dim
FLOPs), and prints the ceiling on the whole network's "% of GEMM peak" if every other FLOP ran at the GEMM peak:
total FLOPs / (attention time + other FLOPs / peak) / peak. The network's FLOPs are torch's flop counter on the plain
formulation (as in ``speed.py``); the GEMM peak is the best of 1024^3 fp32 ``torch.mm`` runs in the same process.
Run it under the pinned allocator of ``speed.py --regimes compute`` (``GLIBC_TUNABLES``) for compute-only numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import build_network, gemm_gflops, network_gflop  # noqa: E402

ATTENTION_KERNEL = 'aten::_scaled_dot_product_flash_attention_for_cpu'


def attention_share(net: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(attention GFLOP, attention seconds, whole forward seconds) of one profiled eval forward."""
    with torch.no_grad():
        net(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            net(x)
            wall = time.perf_counter() - start
    flops = seconds = 0.0
    for event in prof.events():
        if event.name == ATTENTION_KERNEL:
            batch, heads, queries, head_dim = event.input_shapes[0]
            keys = event.input_shapes[1][2]
            flops += 4 * batch * heads * queries * keys * head_dim
            seconds += event.cpu_time_total / 1e6
    return flops / 1e9, seconds, wall


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variants', type=lambda s: [v for v in s.split(',') if v],
                        default=['GRFormer-light', 'ESRT', 'LabNet'])
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3, help='profiled forwards per variant (the fastest counts)')
    parser.add_argument('--tiny', action='store_true', help="each family's tiny configuration (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'{args.size}x{args.size} LR, x{args.scale}, eval fp32, {args.threads} threads, '
          f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}')
    print('| network | GFLOP | attention GFLOP | attention ms | attention GFLOP/s | forward ms (profiled) '
          '| GEMM peak GFLOP/s | ceiling: % of GEMM peak |')
    print('|---|---|---|---|---|---|---|---|')
    ceilings = {}
    for variant in args.variants:
        net = build_network(variant, args.scale, args.tiny).eval()
        x = torch.rand(1, 3, args.size, args.size)
        total = network_gflop(dict(variant=variant, scale=args.scale, tiny=args.tiny, size=args.size))
        attn_gflop, attn_s, wall = min((attention_share(net, x) for _ in range(args.repeats)), key=lambda r: r[2])
        peak = gemm_gflops(torch.device('cpu'), torch.float32, runs=5)
        ceiling = total / (attn_s + (total - attn_gflop) / peak) / peak
        attn_rate = f'{attn_gflop / attn_s:.0f}' if attn_s else '-'
        print(f'| {variant} | {total:.1f} | {attn_gflop:.2f} | {attn_s * 1e3:.0f} | {attn_rate} | {wall * 1e3:.0f} '
              f'| {peak:.0f} | {100 * ceiling:.0f} % |', flush=True)
        ceilings[variant] = ceiling
    return ceilings


if __name__ == '__main__':
    main()
