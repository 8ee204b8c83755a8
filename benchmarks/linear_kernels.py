"""Token-layout kernels: ``TokenLinear`` / ``TokenConv2d`` against ``nn.Linear`` / ``nn.Conv2d`` on CPU.

    .venv/bin/python benchmarks/linear_kernels.py [--tokens 4096] [--repeats 21] [--threads N]

The transformer bodies of HAT, RGT and GRFormer keep features as (B, H*W, C) tokens. ``nn.Linear`` on them
calls a GEMM; ``TokenLinear`` views the tokens as a channels-last (1, C, H*W, 1) image and lets oneDNN's
1x1 convolution compute the same product. Convolutions on token maps (a channels-last view) get their
weight in channels-last format from ``TokenConv2d``, so oneDNN runs its NHWC kernel instead of first
copying the input to NCHW. Prints, per layer shape of the published networks, the median time of the
forward (``no_grad``) and of forward + backward, the ratio, and the max abs difference of the outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

import sr_arch  # noqa: F401  (before basicsr)
from sr_arch.archs.layers import TokenConv2d, TokenLinear

#: (description, in features, out features): token-wise linear layers at embed_dim 180 (HAT, RGT)
LINEAR_SHAPES = [('qkv 180->540', 180, 540), ('MLP fc1 180->360', 180, 360), ('proj 180->180', 180, 180),
                 ('MLP fc2 360->180', 360, 180), ('RG-SA q 180->90', 180, 90)]
#: (description, in channels, out channels, kernel, groups, stride)
CONV_SHAPES = [('HAT CAB 180->60 3x3', 180, 60, 3, 1, 1), ('HAT CAB 60->180 3x3', 60, 180, 3, 1, 1),
               ('group conv 180->180 3x3', 180, 180, 3, 1, 1), ('depthwise 180 3x3', 180, 180, 3, 180, 1),
               ('RG-SA reduction dw 4x4/4', 180, 180, 4, 180, 4)]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compare(reference: nn.Module, ours: nn.Module, x: torch.Tensor,
            repeats: int) -> tuple[float, float, float, float, float]:
    """(reference eval ms, ours eval ms, reference train ms, ours train ms, max abs diff)."""
    ours.load_state_dict(reference.state_dict())
    with torch.no_grad():
        diff = (reference(x) - ours(x)).abs().max().item()
        eval_ms = [median_ms(lambda m=m: m(x), repeats) for m in (reference, ours)]
    x_grad = x.detach().clone().requires_grad_(True)

    def train_step(module: nn.Module) -> None:
        module.zero_grad(set_to_none=True)
        module(x_grad).sum().backward()

    train_ms = [median_ms(lambda m=m: train_step(m), max(3, repeats // 3)) for m in (reference, ours)]
    return eval_ms[0], eval_ms[1], train_ms[0], train_ms[1], diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tokens', type=int, default=4096, help='H*W of the token map (a square); default 64x64')
    parser.add_argument('--repeats', type=int, default=21)
    parser.add_argument('--threads', type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    side = int(args.tokens ** 0.5)
    if side * side != args.tokens:
        parser.error(f'--tokens must be a square number, got {args.tokens}')
    torch.manual_seed(0)
    print(f'CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {side}x{side} tokens, fp32; '
          f'median of {args.repeats} (eval) / {max(3, args.repeats // 3)} (train) runs\n')
    print('| layer | nn eval ms | ours eval ms | eval speed-up | nn train ms | ours train ms | train speed-up '
          '| max abs diff |')
    print('|---|---|---|---|---|---|---|---|')
    rows = []
    for name, cin, cout in LINEAR_SHAPES:
        x = torch.randn(1, args.tokens, cin)
        rows.append((name, *compare(nn.Linear(cin, cout), TokenLinear(cin, cout), x, args.repeats)))
    for name, cin, cout, kernel, groups, stride in CONV_SHAPES:
        padding = kernel // 2 if stride == 1 else 0
        x = torch.randn(1, args.tokens, cin).transpose(1, 2).reshape(1, cin, side, side)  # a token map's view
        reference = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups)
        ours = TokenConv2d(cin, cout, kernel, stride, padding, groups=groups)
        rows.append((name, *compare(reference, ours, x, args.repeats)))
    for name, ref_eval, our_eval, ref_train, our_train, diff in rows:
        print(f'| {name} | {ref_eval:.2f} | {our_eval:.2f} | {ref_eval / our_eval:.2f}x | {ref_train:.2f} '
              f'| {our_train:.2f} | {ref_train / our_train:.2f}x | {diff:.1e} |')


if __name__ == '__main__':
    main()
