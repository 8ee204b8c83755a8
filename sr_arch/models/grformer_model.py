"""``GRModel``: the ``model_type`` of every official GRFormer option file, which the official repo never shipped.

GRFormer reflect-pads to a multiple of its longer window side inside ``forward`` and crops back, so this is
``SRArchModel`` under the official name; the official option files run unchanged apart from the fixes
commented in ours.
"""
from __future__ import annotations

from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.models.sr_arch_model import SRArchModel


@MODEL_REGISTRY.register()
class GRModel(SRArchModel):
    """SRArchModel for GRFormer (any LR size; the network pads itself)."""
