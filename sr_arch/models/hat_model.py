"""``HATModel``: the ``model_type`` of every official HAT option file.

HAT needs H and W to be multiples of its window, so inference pads the LR input (reflect, bottom/right)
to a multiple of ``network_g.window_size`` and crops the output back, as the official ``HATModel``
does. Padding, tiling (official top-level ``tile:`` blocks work), self-ensemble and validation are
``SRArchModel``'s; unlike the official model, ``net_g`` always returns to train mode after a
validation (the official ``self.net_g.train()`` is commented out, so training without EMA silently
continued in eval mode).
"""
from __future__ import annotations

import inspect

from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.archs.hat_arch import HAT
from sr_arch.models.sr_arch_model import SRArchModel

_HAT_DEFAULT_WINDOW = inspect.signature(HAT).parameters['window_size'].default


@MODEL_REGISTRY.register()
class HATModel(SRArchModel):
    """SRArchModel that pads LR inputs to a multiple of HAT's ``window_size``."""

    def default_pad_multiple(self) -> int:
        """``network_g.window_size`` (16 in every published configuration; HAT's own default when absent)."""
        window_size = (self.opt.get('network_g') or {}).get('window_size', _HAT_DEFAULT_WINDOW)
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f'HATModel: network_g.window_size must be a positive integer, got {window_size!r}')
        return window_size
