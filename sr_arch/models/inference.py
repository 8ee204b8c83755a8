"""Inference side of ``SRArchModel``: padding, (later) tiling and self-ensemble, validation.

``test()`` pads the LR input (reflect, bottom/right) so that H and W are at least ``min_input_size``
and multiples of ``pad_multiple``, runs the network (the EMA copy when present) in eval mode without
gradients, crops the output back to ``scale * (H, W)`` and always returns ``net_g`` to train mode.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sr_arch.archs.arch_util import pad_to_multiple


class InferenceMixin:
    """Mixed into basicsr's ``SRModel``; expects ``self.opt``, ``self.net_g``, ``self.lq``."""

    def default_pad_multiple(self) -> int:
        """Multiple of H and W the network needs when the option file does not say; subclasses override."""
        return 1

    def default_min_input_size(self) -> int:
        """Smallest H and W the network accepts; smaller inputs are padded up to it. Subclasses override."""
        return 1

    @property
    def pad_multiple(self) -> int:
        return int(self.opt.get('pad_multiple') or self.default_pad_multiple())

    def inference_network(self) -> nn.Module:
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def pad_input(self, lq: Tensor) -> Tensor:
        min_size = self.default_min_input_size()
        h, w = lq.shape[-2:]
        if h < min_size or w < min_size:
            lq, _ = pad_to_multiple(lq, (max(min_size, h) if h < min_size else 1, max(min_size, w) if w < min_size else 1))
        lq, _ = pad_to_multiple(lq, self.pad_multiple)
        return lq

    def run_network(self, net: nn.Module, lq: Tensor) -> Tensor:
        """Network forward on a padded (B, C, H, W) LR batch; returns (B, C, sH, sW)."""
        return net(lq)

    def test(self) -> None:
        net = self.inference_network()
        was_training = self.net_g.training
        net.eval()
        try:
            with torch.no_grad():
                output = self.run_network(net, self.pad_input(self.lq))
                scale = self.opt['scale']
                self.output = output[..., :self.lq.shape[-2] * scale, :self.lq.shape[-1] * scale]
        finally:
            if was_training:
                self.net_g.train()



