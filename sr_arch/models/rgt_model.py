"""``RGTModel``: ``SRArchModel`` under the official RGT model name.

RGT pads inputs that are too small or too elongated for RG-SA's recursion itself (the official code dies on
them with ``math domain error``). The official ``val.use_chop: true`` (chunked testing of large images) is
honoured by turning it into the shared tiling block ``val.tile`` (docs/inference.md) with chunks of the
official size, unless the option file already has a ``tile`` block.
"""
from __future__ import annotations

from typing import Any

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.models.sr_arch_model import SRArchModel


@MODEL_REGISTRY.register()
class RGTModel(SRArchModel):
    """The ``model_type`` of the RGT option files (same name as the official model)."""

    #: official use_chop: cores of <= 200 LR px plus 16 px of context on each inner side
    OFFICIAL_CHOP_TILE = {'tile_size': 232, 'tile_pad': 32, 'batch_size': 1}

    def __init__(self, opt: dict[str, Any]):
        val_opt = opt.get('val') or {}
        if val_opt.get('use_chop') and not val_opt.get('tile') and not opt.get('tile'):
            opt['val'] = {**val_opt, 'tile': dict(self.OFFICIAL_CHOP_TILE)}
            get_root_logger().info(f'val.use_chop: true (official RGT option) -> val.tile: {self.OFFICIAL_CHOP_TILE}')
        super().__init__(opt)
