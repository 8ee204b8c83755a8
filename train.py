"""BasicSR-compatible training script: python train.py -opt options/train/<Paper>/<file>.yml"""
import sys

from sr_arch.train import main

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
