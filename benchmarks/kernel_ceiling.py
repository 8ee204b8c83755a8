"""How close to the GEMM peak can a network get while its attention and depthwise convolutions run on torch's CPU
kernels?

    .venv/bin/python benchmarks/kernel_ceiling.py [--variants GRFormer-light,ESRT,LabNet] [--size 64]
        [--scale 4] [--threads 2] [--repeats 3] [--tiny]

Profiles one eval forward (``torch.profiler``, input shapes and scalar arguments recorded) of each variant as it ships
and sums the FLOPs and time of two kinds of calls whose speed is the kernel's, not the network's:

* attention: ``aten::_scaled_dot_product_flash_attention_for_cpu``, 4*B*heads*Nq*Nk*head_dim FLOPs;
* depthwise convolutions: oneDNN convolutions (``aten::mkldnn_convolution``) with one input channel per group,
  2*B*C*Ho*Wo*kh*kw FLOPs (the count of torch's flop counter).

It prints two ceilings on the whole network's "% of GEMM peak", each assuming every *other* FLOP ran at the GEMM
peak: with the attention calls at their measured speed, and with the attention and depthwise calls at theirs:
total FLOPs / (their time + other FLOPs / peak) / peak. The network's FLOPs are torch's flop counter on the plain
formulation (as in ``speed.py``); the GEMM peak is ``speed.gemm_gflops`` in the same process. Run it under the pinned
allocator of ``speed.py --regimes compute`` (``GLIBC_TUNABLES``) for compute-only numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import build_network, gemm_gflops, network_gflop  # noqa: E402

ATTENTION_KERNEL = 'aten::_scaled_dot_product_flash_attention_for_cpu'
CONVOLUTION_KERNEL = 'aten::mkldnn_convolution'  # torch's CPU choice for every grouped fp32 convolution


@dataclass
class KernelShare:
    """GFLOP and seconds of one kind of call in a profiled forward."""

    gflop: float = 0.0
    seconds: float = 0.0

    def rate(self) -> str:
        return f'{self.gflop / self.seconds:.0f}' if self.seconds else '-'


def _depthwise_gflop(event) -> float | None:
    """GFLOP of a depthwise convolution event, None for any other convolution."""
    (batch, channels, height, width), weight = event.input_shapes[0], event.input_shapes[1]
    args = event.concrete_inputs
    groups = args[-1]
    if weight[1] != 1 or groups != channels:
        return None
    out_size = []
    for size, kernel, padding, stride, dilation in zip((height, width), weight[2:], args[3], args[4], args[5]):
        out_size.append((size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
    return 2 * batch * weight[0] * out_size[0] * out_size[1] * weight[2] * weight[3] / 1e9


def kernel_shares(net: torch.nn.Module, x: torch.Tensor) -> tuple[KernelShare, KernelShare, float]:
    """(attention, depthwise convolutions, whole forward seconds) of one profiled eval forward."""
    with torch.no_grad():
        net(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            net(x)
            wall = time.perf_counter() - start
    attention, depthwise = KernelShare(), KernelShare()
    for event in prof.events():
        if event.name == ATTENTION_KERNEL:
            batch, heads, queries, head_dim = event.input_shapes[0]
            keys = event.input_shapes[1][2]
            attention.gflop += 4 * batch * heads * queries * keys * head_dim / 1e9
            attention.seconds += event.cpu_time_total / 1e6
        elif event.name == CONVOLUTION_KERNEL:
            gflop = _depthwise_gflop(event)
            if gflop is not None:
                depthwise.gflop += gflop
                depthwise.seconds += event.cpu_time_total / 1e6
    return attention, depthwise, wall


def ceiling(total_gflop: float, peak: float, *bounded: KernelShare) -> float:
    """The best % of GEMM peak (as a fraction) if all FLOPs but ``bounded`` ran at ``peak`` GFLOP/s."""
    seconds = sum(share.seconds for share in bounded)
    other = total_gflop - sum(share.gflop for share in bounded)
    return total_gflop / (seconds + other / peak) / peak


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
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
    print('| network | GFLOP | attention GFLOP | attention ms | attention GFLOP/s | depthwise GFLOP | depthwise ms '
          '| depthwise GFLOP/s | forward ms (profiled) | GEMM peak GFLOP/s | ceiling: attention '
          '| ceiling: attention + depthwise |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    ceilings = {}
    for variant in args.variants:
        net = build_network(variant, args.scale, args.tiny).eval()
        x = torch.rand(1, 3, args.size, args.size)
        total = network_gflop(dict(variant=variant, scale=args.scale, tiny=args.tiny, size=args.size))
        attention, depthwise, wall = min((kernel_shares(net, x) for _ in range(args.repeats)), key=lambda r: r[2])
        peak = gemm_gflops(torch.device('cpu'), torch.float32, runs=5)
        ceilings[variant] = {'attention': ceiling(total, peak, attention),
                             'attention+depthwise': ceiling(total, peak, attention, depthwise)}
        print(f'| {variant} | {total:.1f} | {attention.gflop:.2f} | {attention.seconds * 1e3:.0f} | {attention.rate()} '
              f'| {depthwise.gflop:.2f} | {depthwise.seconds * 1e3:.0f} | {depthwise.rate()} | {wall * 1e3:.0f} '
              f'| {peak:.0f} | {100 * ceilings[variant]["attention"]:.0f} % '
              f'| {100 * ceilings[variant]["attention+depthwise"]:.0f} % |', flush=True)
    return ceilings


if __name__ == '__main__':
    main()
