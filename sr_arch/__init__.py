"""sr-arch: HAT, RGT, GRFormer, ESRT and LabNet as a BasicSR plug-in.

``import sr_arch`` applies the basicsr compatibility fixes and registers every architecture,
dataset, model and loss of this package into basicsr's registries.
"""
from sr_arch import compat

compat.apply()

from sr_arch import archs, data, losses, models  # noqa: E402,F401  (registration side effects)

__version__ = '0.1.0'
