"""Imports every ``*_arch.py`` module of this folder, so their classes register with basicsr, and collects the
families' declarative records (``FAMILY`` in each arch file; ``sr_arch.archs.spec.FamilySpec``)."""
from __future__ import annotations

from sr_arch.archs.spec import FamilySpec
from sr_arch.utils.registration import import_modules_with_suffix

_modules = import_modules_with_suffix(__name__, __path__[0], '_arch')

#: registry name -> family record, for every arch module that declares one
FAMILIES: dict[str, FamilySpec] = {m.FAMILY.name: m.FAMILY for m in _modules if isinstance(getattr(m, 'FAMILY', None),
                                                                                             FamilySpec)}


def family_spec(name: str) -> FamilySpec:
    """The record of a family by registry name or alias (e.g. 'LabNet_STEA'); KeyError naming the known ones."""
    for spec in FAMILIES.values():
        if name == spec.name or name in spec.aliases:
            return spec
    raise KeyError(f'{name!r} is not a network family of sr_arch; known: {", ".join(FAMILIES)}')


def find_family_spec(name: str | None) -> FamilySpec | None:
    """``family_spec`` or None (for networks of other packages, e.g. basicsr's own)."""
    try:
        return family_spec(name) if name else None
    except KeyError:
        return None
