"""The synthetic degradation of blind SR (IKC/DAN "setting 1"): Gaussian blur -> bicubic /s -> noise -> 8 bit.

One leaf module (nothing else of ``sr_arch`` imported) shared by the training data made on the fly
(``sr_arch.data.blind_sr_dataset.BlindSRDataset``) and the Gaussian8 test sets written to disk
(``sr_arch.data.prepare.gaussian8``), so both degrade an image in exactly the same way.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.utils.matlab_functions import imresize
from torch import Tensor


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, angle: float = 0.0) -> np.ndarray:
    """Normalised (size, size) Gaussian blur kernel, float64, centred on the middle pixel.

    Isotropic when ``sigma_y`` is None; otherwise the covariance is R(angle) diag(sx^2, sy^2) R(angle)^T
    with x along columns and y along rows (DAN's ``random_batch_kernel`` convention).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f'blur kernel size must be a positive odd integer, got {size}')
    if sigma_x <= 0 or (sigma_y is not None and sigma_y <= 0):
        raise ValueError(f'blur sigma must be > 0, got sigma_x={sigma_x}, sigma_y={sigma_y}')
    axis = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(axis, axis)
    if sigma_y is None:
        exponent = (xx ** 2 + yy ** 2) / (2.0 * sigma_x ** 2)
    else:
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        covariance = rotation @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rotation.T
        xy = np.stack([xx, yy], axis=-1)
        exponent = 0.5 * np.einsum('...i,ij,...j->...', xy, np.linalg.inv(covariance), xy)
    kernel = np.exp(-exponent)
    return kernel / kernel.sum()


def blur(img: Tensor, kernel: np.ndarray) -> Tensor:
    """Filter a (C, H, W) image with a (k, k) kernel, reflect padding (DAN's ``BatchBlur``). Same shape out."""
    k = kernel.shape[-1]
    pad = k // 2
    weight = torch.from_numpy(kernel).to(img.dtype).expand(img.shape[0], 1, k, k)
    # reflect needs pad < size; tiny images fall back to replicating the border
    mode = 'reflect' if min(img.shape[-2:]) > pad else 'replicate'
    padded = F.pad(img[None], (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, weight, groups=img.shape[0])[0]


def quantize(img: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to 8-bit levels (what saving the LR as PNG does).

    The official training rounds without clamping; clamping makes training LRs match the PNG test LRs.
    """
    return img.clamp(0, 1).mul(255.0).round().div(255.0)


def degrade(hr: Tensor, kernel: np.ndarray, scale: int, noise_std: float = 0.0,
            rng: np.random.Generator | None = None) -> Tensor:
    """Blur -> MATLAB bicubic /scale -> (noise) -> 8-bit quantisation.

    Args:
        hr: (C, H, W) float in [0, 1]; H and W multiples of ``scale``.
        kernel: (k, k) blur kernel.
        scale: downsampling factor.
        noise_std: std of additive Gaussian noise on the LR, in [0, 1] units.
        rng: generator of the noise (required when noise_std > 0).

    Returns:
        (C, H / scale, W / scale) float in [0, 1], multiples of 1/255.
    """
    if hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise ValueError(f'HR size {tuple(hr.shape[-2:])} is not a multiple of scale {scale}; mod-crop it first')
    lr = imresize(blur(hr, kernel), 1 / scale)
    if noise_std > 0:
        if rng is None:
            raise ValueError('degrade: noise_std > 0 needs an rng')
        lr = lr + torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32)) * noise_std
    return quantize(lr)


def mod_crop(img: np.ndarray, multiple: int) -> np.ndarray:
    """Crop (H, W, ...) bottom/right so H and W are multiples of ``multiple``."""
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[:h - h % multiple, :w - w % multiple])
