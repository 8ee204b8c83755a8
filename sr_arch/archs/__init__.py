"""Imports every `*_arch.py` module of this folder so their classes register with basicsr."""
from sr_arch.utils.registration import import_modules_with_suffix

_modules = import_modules_with_suffix(__name__, __path__[0], '_arch')
