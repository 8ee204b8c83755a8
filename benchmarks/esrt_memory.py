"""Peak memory and time of ESRT inference: our EMHA vs the official (N/4)^2 formulation.

    python benchmarks/esrt_memory.py                       # 320x180 and 640x360 LR, x4, CPU
    python benchmarks/esrt_memory.py --device cuda --sizes 320x180 640x360 1280x720
    python benchmarks/esrt_memory.py --weights net_g.pth   # trained weights instead of the default init

Every (size, formulation) runs in a fresh subprocess (batch 1, eval, fp32, no grad), so CPU peaks
do not hide each other: CPU peak = growth of the process's peak RSS (``ru_maxrss``) during the
forward pass; CUDA peak = ``torch.cuda.max_memory_allocated`` minus what was allocated before.
"ours" is the default attention backend, "plain" is ``attention_backend('plain')``: the official
formulation, one (N/4)^2 score matrix per head and band. A configuration whose score matrices cannot
fit in the free memory is reported with the reason instead of being run. The last column is the max
abs difference between the two outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = {'ours': 'sdpa', 'plain': 'plain'}
GIB = 1024 ** 3


def parse_size(text: str) -> tuple[int, int]:
    """'320x180' (width x height, LR pixels) -> (320, 180)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 320x180 (LR width x height), got {text!r}') from None
    if width < 2 or height < 2:
        raise argparse.ArgumentTypeError(f'size must be at least 2x2, got {text!r}')
    return width, height


def plain_scores_bytes(width: int, height: int, batch: int = 1, heads: int = 8) -> int:
    """Bytes the official EMHA holds at its peak: two fp32 (N/4)^2 score matrices per head."""
    band = width * height // 4
    return 2 * batch * heads * band * band * 4


def free_memory_bytes(device: str) -> int:
    if device == 'cuda':
        import torch

        return torch.cuda.mem_get_info()[0]
    with open('/proc/meminfo') as f:
        fields = dict(line.split(':', 1) for line in f)
    return int(fields['MemAvailable'].split()[0]) * 1024


def lr_image(width: int, height: int):
    """A real photo (scikit-image astronaut) resized to width x height, (1, 3, H, W) in [0, 1]."""
    import cv2
    import skimage.data
    import torch

    img = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)[None]


def worker(args: argparse.Namespace) -> None:
    """Measure one configuration in this (fresh) process; prints one JSON line."""
    import resource

    import torch

    import sr_arch  # noqa: F401  (before basicsr)
    from sr_arch.archs.esrt_arch import ESRT
    from sr_arch.archs.layers import attention_backend
    from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = ESRT(upscale=args.scale)
    if args.weights:
        net.load_state_dict(extract_state_dict(load_checkpoint(args.weights), source=args.weights), strict=True)
    net = net.eval().to(device)
    x = lr_image(*args.size).to(device)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad(), attention_backend(BACKENDS[args.backend]):
        y = net(x)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    torch.save(y.cpu(), args.out)
    print(json.dumps(dict(peak_bytes=peak, seconds=seconds, cpu_seconds=cpu_seconds)))


def run_config(args: argparse.Namespace, size: tuple[int, int], backend: str, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--size', f'{size[0]}x{size[1]}',
           '--backend', backend, '--scale', str(args.scale), '--device', args.device,
           '--threads', str(args.threads), '--out', out]
    if args.weights:
        cmd += ['--weights', args.weights]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = 'killed (out of memory?)' if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ['?'])[-1]
        return dict(error=f'failed: {why}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=[(320, 180), (640, 360)],
                        help='LR sizes, width x height (default: 320x180 640x360)')
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4))
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument('--weights', help='checkpoint to load (default: seeded default init)')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--size', type=parse_size, help=argparse.SUPPRESS)
    parser.add_argument('--backend', choices=list(BACKENDS), help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            parser.error('--device cuda: no CUDA device is available')

    print(f'ESRT x{args.scale}, batch 1, eval, fp32, {args.device}'
          + (f' ({args.threads} threads)' if args.device == 'cpu' else ''))
    header = (f'{"LR size":>9} | {"EMHA":>5} | {"peak memory":>12} | {"wall time":>9} | {"CPU time":>9} | '
              'max |ours - plain|')
    print(header)
    print('-' * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in args.sizes:
            outputs = {}
            for backend in args.backends:
                out = os.path.join(tmp, f'{backend}_{width}x{height}.pt')
                need = plain_scores_bytes(width, height) if backend == 'plain' else 0
                free = free_memory_bytes(args.device)
                if need > free:
                    result = dict(error=f'skipped: its (N/4)^2 scores need {need / GIB:.1f} GiB, '
                                        f'{free / GIB:.1f} GiB free')
                else:
                    result = run_config(args, (width, height), backend, out)
                label = f'{width}x{height}'
                if 'error' in result:
                    print(f'{label:>9} | {backend:>5} | {result["error"]}')
                    continue
                outputs[backend] = out
                diff = ''
                if backend == 'plain' and 'ours' in outputs:
                    import torch

                    ours, plain = (torch.load(outputs[b], weights_only=True) for b in ('ours', 'plain'))
                    diff = f'{(ours - plain).abs().max().item():.2e}'
                print(f'{label:>9} | {backend:>5} | {result["peak_bytes"] / GIB:>8.3f} GiB | '
                      f'{result["seconds"]:>7.1f} s | {result["cpu_seconds"]:>7.1f} s | {diff}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
