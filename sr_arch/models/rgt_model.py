"""``RGTModel``: ``SRArchModel`` with RGT's input-size needs.

RGT itself needs no padding for window sizes (it zero-pads q/k/v internally), but its RG-SA needs
H and W of at least 16 in eval mode, and an image whose long side asks for more reductions than its
short side survives (aspect ratio above ~16:1) fails too. The official code dies on both with
``math domain error`` / a conv size error; this model pads (reflect, bottom/right) up to
``min_padded_size`` and crops the output back.

The official ``val.use_chop: true`` (chunked testing of large images) is honoured by turning it into
the shared tiling block ``val.tile`` (docs/inference.md) with chunks of the official size, unless the
option file already has a ``tile`` block.
"""
from __future__ import annotations

from typing import Any

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor, nn

from sr_arch.archs.arch_util import pad_to_multiple
from sr_arch.archs.rgt_arch import EVAL_MIN_INPUT_SIZE, min_padded_size
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

    def default_min_input_size(self) -> int:
        return EVAL_MIN_INPUT_SIZE

    def run_network(self, net: nn.Module, lq: Tensor) -> Tensor:
        """(B, C, H, W) LR -> (B, C, sH, sW); pads very elongated inputs so RG-SA's recursion fits."""
        height, width = lq.shape[-2:]
        target_h, target_w = min_padded_size(height, width, training=False)
        if (target_h, target_w) == (height, width):
            return super().run_network(net, lq)
        padded, _ = pad_to_multiple(lq, (target_h, target_w))  # target >= size, so this pads exactly to target
        output = super().run_network(net, padded)
        scale = output.shape[-1] // padded.shape[-1]
        return output[..., :height * scale, :width * scale]
