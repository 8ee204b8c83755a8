"""Testing entry point: ``python test.py -opt FILE`` / ``sr-arch test -opt FILE``.

Phase-0 placeholder that runs basicsr's pipeline; replaced by our own.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import sr_arch  # noqa: F401
    from basicsr.test import test_pipeline

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    test_pipeline(os.getcwd())
    return 0


if __name__ == '__main__':
    sys.exit(main())
