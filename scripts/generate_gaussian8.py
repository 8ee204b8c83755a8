"""Same as `sr-arch prepare gaussian8` (run with --help for the options)."""
import sys

from sr_arch.prepare import main

sys.exit(main(['gaussian8', *sys.argv[1:]]))
