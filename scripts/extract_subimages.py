"""Same as `sr-arch prepare subimages` (run with --help for the options)."""
import sys

from sr_arch.prepare import main

sys.exit(main(['subimages', *sys.argv[1:]]))
