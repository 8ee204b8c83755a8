"""Same as `sr-arch prepare lmdb` (run with --help for the options)."""
import sys

from sr_arch.prepare import main

sys.exit(main(['lmdb', *sys.argv[1:]]))
