"""Write the Gaussian8 blind-SR test sets (same as `sr-arch prepare gaussian8`); --help for options."""
import sys
from sr_arch.data.gaussian8 import main
sys.exit(main())
