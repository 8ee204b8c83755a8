"""Compatibility fixes for basicsr 1.4.2 on current torch / torchvision.

Everything that patches basicsr lives here, is applied once on ``import sr_arch`` and is listed below,
one line per fix:

1. ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17; basicsr's
   ``data/degradations.py`` imports ``rgb_to_grayscale`` from it (BasicSR #663). We alias the module.
"""
from __future__ import annotations

import sys
import types

_APPLIED = False


def _alias_functional_tensor() -> None:
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision still has it)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    alias = types.ModuleType(name)
    alias.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = alias


def apply() -> None:
    """Apply every fix once. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_functional_tensor()
    _APPLIED = True
