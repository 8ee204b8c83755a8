"""Input normalisation and the pixel-shuffle reconstruction heads shared by HAT, RGT and GRFormer."""
from __future__ import annotations

from typing import Sequence

import torch
from basicsr.archs.arch_util import Upsample
from basicsr.archs.swinir_arch import UpsampleOneStep
from torch import Tensor, nn

__all__ = ['DIV2K_RGB_MEAN', 'MeanShift', 'Upsample', 'UpsampleOneStep', 'pixelshuffle_reconstruction']

#: RGB mean of DIV2K, subtracted by HAT, RGT and GRFormer before the first convolution.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Module):
    """Subtracts (``forward``) or adds back (``inverse``) a fixed RGB mean, scaled by ``img_range``.

    The mean is a non-persistent buffer, so it follows ``.to(device)`` but is not in state_dicts (the official
    HAT/RGT/GRFormer checkpoints don't have it either).
    """

    def __init__(self, in_chans: int = 3, img_range: float = 1.0, rgb_mean: Sequence[float] = DIV2K_RGB_MEAN):
        super().__init__()
        self.img_range = img_range
        mean = torch.tensor(rgb_mean if in_chans == 3 else [0.0] * in_chans).view(1, in_chans, 1, 1)
        self.register_buffer('mean', mean, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def inverse(self, x: Tensor) -> Tensor:
        return x / self.img_range + self.mean.to(x.dtype)


def pixelshuffle_reconstruction(embed_dim: int, out_chans: int, upscale: int,
                                num_feat: int = 64) -> tuple[nn.Module, nn.Module, nn.Module]:
    """SwinIR's 'pixelshuffle' reconstruction as (conv_before_upsample, upsample, conv_last).

    conv3x3 embed_dim -> num_feat + LeakyReLU, ``Upsample`` (pixel shuffle), conv3x3 num_feat -> out_chans:
    (B, embed_dim, H, W) -> (B, out_chans, upscale*H, upscale*W) when applied in that order. Networks assign the
    three to attributes of those names, the official state_dict keys.
    """
    conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
    return conv_before_upsample, Upsample(upscale, num_feat), nn.Conv2d(num_feat, out_chans, 3, 1, 1)
