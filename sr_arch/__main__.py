import sys

from sr_arch.cli import main

sys.exit(main())
