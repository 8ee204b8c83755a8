"""The ``sr-arch`` console command (also ``python -m sr_arch``).

Each subcommand lives in its own module exposing ``main(argv: list[str] | None) -> int | None``
and parses its own arguments, so ``sr-arch <command> --help`` shows that command's options.
"""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    'train': ('sr_arch.train', 'train a network from an option file (BasicSR train.py options)'),
    'test': ('sr_arch.test', 'benchmark a trained network from an option file'),
    'infer': ('sr_arch.infer', 'upscale images or folders with any supported checkpoint'),
    'export': ('sr_arch.export', 'export a checkpoint to ONNX (any input size, checked in onnxruntime) or safetensors'),
    'prepare': ('sr_arch.prepare', 'prepare datasets: sub-images, bicubic LR, LMDB, meta-info, benchmarks'),
    'profile': ('sr_arch.profile', 'parameters, MACs, latency and peak memory of an architecture'),
    'compare': ('sr_arch.compare', 'paper-style visual comparison figure: zoomed crops with PSNR / SSIM'),
    'demo': ('sr_arch.demo', 'train a small network on bundled photos and benchmark it against bicubic'),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ['usage: sr-arch <command> [options]', '', 'commands:']
    lines += [f'  {name:<{width}}  {desc}' for name, (_, desc) in COMMANDS.items()]
    lines += ['', "Run 'sr-arch <command> --help' for a command's options."]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sr-arch: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == '__main__':
    sys.exit(main())
