"""``HATModel``: the ``model_type`` of every official HAT option file.

HAT pads its input to a multiple of its window itself (the official ``HATModel`` does it outside the network),
so this is ``SRArchModel`` under the official name: padding, tiling (official top-level ``tile:`` blocks work),
self-ensemble and validation are ``SRArchModel``'s. Unlike the official model, ``net_g`` always returns to
train mode after a validation (the official ``self.net_g.train()`` is commented out, so training without EMA
silently continued in eval mode).
"""
from __future__ import annotations

from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.models.sr_arch_model import SRArchModel


@MODEL_REGISTRY.register()
class HATModel(SRArchModel):
    """``SRArchModel`` under the official HAT model name."""
