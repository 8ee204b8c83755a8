"""``SRArchModel``: basicsr's ``SRModel`` with the inference every network of this package needs.

``test()`` pads the LR input (reflect, bottom/right) to the multiple the network requires, runs the
network (EMA copy when present) in eval mode without gradients, crops the output back to
``scale * (H, W)`` and always returns ``net_g`` to train mode afterwards.

Per-family models (``HATModel``, ``RGTModel``…) are thin subclasses that only say which multiple
their network needs (``pad_multiple``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from sr_arch.archs.arch_util import pad_to_multiple


@MODEL_REGISTRY.register()
class SRArchModel(SRModel):
    """SRModel with padding to a multiple and a train-mode-safe ``test()``.

    Option keys (top level of the option file, all optional):
        pad_multiple (int): pad H and W of the LR input to this multiple (default: ``default_pad_multiple()``).
    """

    def default_pad_multiple(self) -> int:
        """Multiple the network needs when the option file does not say; subclasses override."""
        return 1

    @property
    def pad_multiple(self) -> int:
        return int(self.opt.get('pad_multiple') or self.default_pad_multiple())

    def inference_network(self) -> nn.Module:
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def run_network(self, net: nn.Module, lq: Tensor) -> Tensor:
        """Network forward on a padded (B, C, H, W) LR batch; returns (B, C, sH, sW)."""
        return net(lq)

    def test(self) -> None:
        net = self.inference_network()
        was_training = self.net_g.training
        net.eval()
        try:
            with torch.no_grad():
                lq, (pad_h, pad_w) = pad_to_multiple(self.lq, self.pad_multiple)
                output = self.run_network(net, lq)
                scale = self.opt['scale']
                self.output = output[..., :self.lq.shape[-2] * scale, :self.lq.shape[-1] * scale]
        finally:
            if was_training:
                self.net_g.train()
