"""``sr-arch profile``: parameters, MACs, latency and peak memory of an architecture, as a table.

    sr-arch profile --arch HAT --variant HAT-S --scale 4 --size 64x64 [--device cpu|cuda] [--dtype fp32|bf16]
    sr-arch profile --arch RGT --scale 2 --size 128x128        # every published RGT variant
    sr-arch profile --model experiments/x/models/net_g_latest.pth --size 64x64

* MACs = FLOPs / 2 of what the network computes, whatever kernel runs it (``sr_arch.utils.macs``):
  ``FlopCounterMode`` over the plain (official) formulation on a meta-device copy of the network:
  matrix products, convolutions, attention; element-wise ops, norms and resizes are not counted.
* Latency: median of ``--repeats`` timed forward passes after ``--warmup`` untimed ones (no gradients,
  eval mode, CUDA synchronised).
* Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` during one forward, above the weights and the
  input; CPU: peak bytes of the tensors alive at once during the forward (``PeakMemoryTracker``).
Any input size works: each network pads its input as its family does (e.g. to a multiple of 16 for HAT).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass
class ProfileRow:
    """One measured configuration (``error`` set instead of numbers when it could not run)."""

    model: str
    scale: int
    input: str
    params: int | None = None
    macs: float | None = None
    latency_ms: float | None = None
    peak_memory_mib: float | None = None
    device: str = 'cpu'
    dtype: str = 'fp32'
    error: str | None = None


def parse_size(text: str) -> tuple[int, int]:
    """'64x48' -> (64, 48) as (H, W); '64' -> (64, 64)."""
    parts = text.lower().split('x')
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) <= 0:
        raise argparse.ArgumentTypeError(f'--size must look like 64x64 (HxW) or 64, got {text!r}')
    return (sizes[0], sizes[-1])


def count_macs(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Multiply-accumulates of one ``forward(x)`` on ``x``'s device (``sr_arch.utils.macs.count_macs``)."""
    from sr_arch.utils.macs import count_macs as count

    return count(forward, x).total


def median_latency(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int,
                   warmup: int) -> float:
    """Median seconds of ``repeats`` runs of ``forward(x)`` after ``warmup`` runs."""
    cuda = x.device.type == 'cuda'
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            forward(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_network(name: str, net: torch.nn.Module, scale: int, size: tuple[int, int], device: torch.device,
                    dtype: torch.dtype, batch: int = 1, repeats: int = 5, warmup: int = 1,
                    in_chans: int = 3) -> ProfileRow:
    """Measure one network (already on ``device``/``dtype``, eval mode) on a (batch, in_chans, H, W) input.

    MACs are counted on a meta-device copy of ``net`` (no compute, no activation memory).
    """
    from sr_arch.utils.macs import network_macs
    from sr_arch.utils.tiling import measure_peak_memory

    dtype_name = next(k for k, v in _DTYPES.items() if v == dtype)
    row = ProfileRow(name, scale, f'{batch}x{size[0]}x{size[1]}', device=str(device), dtype=dtype_name)
    row.params = sum(p.numel() for p in net.parameters())
    x = torch.rand(batch, in_chans, *size, device=device, dtype=dtype)
    try:
        macs = network_macs(net, tuple(x.shape), dtype)
        row.macs = macs.total
        if macs.uncounted:
            print(f'sr-arch profile: warning: {name}: ops without a MAC formula, not counted: '
                  f'{", ".join(macs.uncounted)}', file=sys.stderr)
        with torch.no_grad():
            row.peak_memory_mib = measure_peak_memory(lambda: net(x), device) / 2**20
        row.latency_ms = median_latency(net, x, repeats, warmup) * 1000
    except Exception as err:  # noqa: BLE001  (e.g. bf16 unsupported by an op on this device: report, go on)
        row.error = f'{type(err).__name__}: {" ".join(str(err).split())[:200]}'
    return row


def format_table(rows: list[ProfileRow], fmt: str = 'md') -> str:
    """Markdown (default), CSV or JSON."""
    if fmt == 'json':
        return json.dumps([asdict(r) for r in rows], indent=2)
    header = ['Model', 'Scale', 'Input (BxHxW)', 'Params (M)', 'MACs (G)', 'Latency (ms)', 'Peak memory (MiB)',
              'Device', 'dtype']

    def cells(r: ProfileRow) -> list[str]:
        if r.error:
            return [r.model, f'x{r.scale}', r.input, f'{r.params / 1e6:.3f}' if r.params else '-',
                    f'error: {r.error}', '', '', r.device, r.dtype]
        return [r.model, f'x{r.scale}', r.input, f'{r.params / 1e6:.3f}', f'{r.macs / 1e9:.4g}',
                f'{r.latency_ms:.1f}', f'{r.peak_memory_mib:.1f}', r.device, r.dtype]

    if fmt == 'csv':
        return '\n'.join([','.join(header)] + [','.join(cells(r)) for r in rows])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cells(r)) + ' |' for r in rows]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    from sr_arch.archs import FAMILIES

    parser = argparse.ArgumentParser(prog='sr-arch profile',
                                     description='Parameters, MACs, latency and peak memory of an architecture.',
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--arch', choices=sorted(FAMILIES), help='architecture family')
    source.add_argument('--model', metavar='CKPT', help='profile the network of a checkpoint (detected)')
    parser.add_argument('--variant', nargs='*', help='published variant(s), e.g. HAT-S (default: all of --arch)')
    parser.add_argument('--kwargs', type=json.loads, default={}, help='JSON constructor overrides, e.g. '
                        '\'{"embed_dim": 96}\'')
    parser.add_argument('--scale', type=int, default=4, help='upscale factor (default 4; ignored with --model)')
    parser.add_argument('--size', type=parse_size, default=(64, 64), help='LR input HxW (default 64x64)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default cpu)')
    parser.add_argument('--dtype', choices=sorted(_DTYPES), default='fp32', help='precision (default fp32)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs; the median is reported (default 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs first (default 1)')
    parser.add_argument('--format', choices=('md', 'csv', 'json'), default='md', help='table format (default md)')
    return parser


def _configurations(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, family, constructor kwargs) for each variant asked for."""
    from sr_arch.utils.detect import published_variants

    variants = published_variants(args.arch, args.scale)
    names = args.variant or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f'sr-arch profile: error: unknown {args.arch} variant(s) {unknown} at x{args.scale}; '
                         f'known: {", ".join(variants)}')
    return [(name, args.arch, {**variants[name], **args.kwargs}) for name in names]


def main(argv: list[str] | None = None) -> int:
    import sr_arch  # noqa: F401  (registers the architectures)
    from sr_arch.archs import family_spec
    from sr_arch.infer import InferenceError, load_model

    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print(f'sr-arch profile: error: --device {args.device}: CUDA is not available', file=sys.stderr)
        return 2
    dtype = _DTYPES[args.dtype]
    rows = []
    if args.model:
        try:
            loaded = load_model(args.model, device=device, dtype=dtype)
        except InferenceError as err:
            print(f'sr-arch profile: error: {err}', file=sys.stderr)
            return 2
        rows.append(profile_network(loaded.detection.describe(), loaded.net, loaded.scale, args.size, device, dtype,
                                    args.batch, args.repeats, args.warmup, loaded.detection.kwargs.get('in_chans', 3)))
    else:
        for name, family, kwargs in _configurations(args):
            try:
                net = family_spec(family).cls(**kwargs).eval().to(device=device, dtype=dtype)
            except (ValueError, TypeError) as err:  # e.g. --scale 5 for a network with 2^n/3 upsamplers
                print(f'sr-arch profile: error: {name} x{kwargs["upscale"]}: {" ".join(str(err).split())}',
                      file=sys.stderr)
                return 2
            rows.append(profile_network(name, net, kwargs['upscale'], args.size, device, dtype, args.batch,
                                        args.repeats, args.warmup, kwargs.get('in_chans', 3)))
            del net
    print(format_table(rows, args.format))
    return 1 if any(r.error for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
