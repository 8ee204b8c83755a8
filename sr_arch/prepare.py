"""``sr-arch prepare <step>``: dataset preparation (see datasets/README.md for the full recipes).

Every step is resumable and safe to re-run: outputs are built under ``<output>.partial`` and renamed
when complete, finished outputs are skipped, and an interrupted run is completed by running the same
command again. Unreadable images are reported by path (``--on-error stop``, the default) or skipped
and counted (``--on-error skip``).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from sr_arch.data.prepare.common import PrepareError

#: step -> (module, add-arguments function, run function, one-line description)
STEPS: dict[str, tuple[str, str, str, str]] = {
    'subimages': ('sr_arch.data.prepare.subimages', 'add_arguments', 'run',
                  'crop HR / LR images into overlapping sub-images (BasicSR extract_subimages)'),
    'bicubic': ('sr_arch.data.prepare.bicubic', 'add_arguments', 'run',
                'MATLAB-compatible bicubic LR images for x2/x3/x4 (mod-crop first)'),
    'lmdb': ('sr_arch.data.prepare.lmdb_store', 'add_arguments', 'run',
             'LMDB databases with meta_info.txt in basicsr layout'),
    'verify': ('sr_arch.data.prepare.lmdb_store', 'add_verify_arguments', 'run_verify',
               'check an LMDB against its source folder, image by image'),
    'meta-info': ('sr_arch.data.prepare.meta_info', 'add_arguments', 'run',
                  'meta-info file of an HR-only folder (ImageNet), skipping small / unreadable images'),
    'benchmarks': ('sr_arch.data.prepare.benchmarks', 'add_arguments', 'run',
                   'lay out Set5/Set14/B100/Urban100/Manga109 as benchmark/<Set>/HR + LR_bicubic/X{s}'),
    'gaussian8': ('sr_arch.data.prepare.gaussian8', 'add_arguments', 'run',
                  'Gaussian8 blurred LR test sets (LabNet / IKC / DAN protocol)'),
}


def usage() -> str:
    width = max(map(len, STEPS))
    lines = ['usage: sr-arch prepare <step> [options]', '', 'steps:']
    lines += [f'  {name:<{width}}  {spec[-1]}' for name, spec in STEPS.items()]
    lines += ['', "Run 'sr-arch prepare <step> --help' for a step's options; datasets/README.md has the recipes."]
    return '\n'.join(lines)


def plain_text(docstring: str) -> str:
    """A module docstring as terminal text: reStructuredText double-backquote literals and :role:`x`
    references lose their markup (argparse prints the description as it is)."""
    text = re.sub(r':\w+:`([^`]+)`', r'\1', docstring)
    return re.sub(r'``([^`]+)``', r'\1', text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"sr-arch prepare: unknown step '{step}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, add_arguments, run, description = STEPS[step]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f'sr-arch prepare {step}', description=plain_text(module.__doc__ or ''),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    getattr(module, add_arguments)(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, run)(args) or 0)
    except PrepareError as err:
        print(f'sr-arch prepare {step}: error: {err}', file=sys.stderr)
        return 1
    except OSError as err:  # full disk, permissions, vanished files: finished work is kept
        print(f'sr-arch prepare {step}: error: {err}; fix the cause and run the same command again to resume',
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'\nsr-arch prepare {step}: interrupted; finished work is kept in <output>.partial, run the same '
              'command again to complete it', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
