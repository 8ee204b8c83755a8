"""Same as `sr-arch prepare meta-info` (run with --help for the options)."""
import sys

from sr_arch.prepare import main

sys.exit(main(['meta-info', *sys.argv[1:]]))
