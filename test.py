"""BasicSR-compatible testing script: python test.py -opt options/test/<Paper>/<file>.yml"""
import sys

from sr_arch.test import main

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
