"""Weight initialisation shared by the transformer networks."""
from __future__ import annotations

from basicsr.archs.arch_util import trunc_normal_
from torch import Tensor, nn


def trunc_normal_unless_meta(tensor: Tensor, std: float = 0.02) -> None:
    """``trunc_normal_``, skipped on the meta device (no values there; it is slow through torch's refs)."""
    if not tensor.is_meta:
        trunc_normal_(tensor, std=std)


def init_transformer_weights(module: nn.Module) -> None:
    """Swin-style initialisation, for ``net.apply``: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_unless_meta(module.weight)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.LayerNorm):
        nn.init.constant_(module.bias, 0)
        nn.init.constant_(module.weight, 1.0)
