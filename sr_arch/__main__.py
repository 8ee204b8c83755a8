import sys

from sr_arch.cli import main

if __name__ == '__main__':  # spawned worker processes import this module too
    sys.exit(main())
