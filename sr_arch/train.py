"""Training entry point: ``python train.py -opt FILE`` / ``sr-arch train -opt FILE``.

Phase-0 placeholder that runs basicsr's pipeline; replaced by our own thin pipeline.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import sr_arch  # noqa: F401  (registers everything, applies compat fixes)
    from basicsr.train import train_pipeline

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    train_pipeline(os.getcwd())
    return 0


if __name__ == '__main__':
    sys.exit(main())
