"""Automatic module import used by the sub-packages' ``__init__`` (the BasicSR convention)."""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def import_modules_with_suffix(package: str, folder: str, suffix: str) -> list[ModuleType]:
    """Import ``<package>.<name>`` for every ``<name><suffix>.py`` file in ``folder``, sorted by name."""
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(f'{suffix}.py'))
    return [importlib.import_module(f'{package}.{name}') for name in names]
