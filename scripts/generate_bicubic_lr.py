"""Same as `sr-arch prepare bicubic` (run with --help for the options)."""
import sys

from sr_arch.prepare import main

sys.exit(main(['bicubic', *sys.argv[1:]]))
