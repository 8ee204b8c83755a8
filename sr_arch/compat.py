"""Compatibility fixes for basicsr 1.4.2 on current torch / torchvision.

Everything that patches basicsr lives here, is applied once on ``import sr_arch`` and is listed below,
one line per fix:

1. ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17; basicsr's
   ``data/degradations.py`` imports ``rgb_to_grayscale`` from it (BasicSR #663). We alias the module.
2. ``BaseModel.model_to_device`` gives DDP ``device_ids=[torch.cuda.current_device()]`` even on CPU: basicsr's
   own models crashed under torchrun with gloo ("Found no NVIDIA driver"); on CPU we wrap without device ids.
"""
from __future__ import annotations

import sys
import types

_APPLIED = False


def _alias_functional_tensor() -> None:
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision still has it)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    alias = types.ModuleType(name)
    alias.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = alias


def _ddp_without_cuda() -> None:
    from basicsr.models.base_model import BaseModel
    from torch.nn.parallel import DistributedDataParallel

    original = BaseModel.model_to_device
    if getattr(original, '_sr_arch_cpu_ddp', False):
        return

    def model_to_device(self, net):
        if self.opt.get('dist') and self.device.type == 'cpu':
            return DistributedDataParallel(net.to(self.device),
                                           find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return original(self, net)

    model_to_device._sr_arch_cpu_ddp = True
    BaseModel.model_to_device = model_to_device


def apply() -> None:
    """Apply every fix once. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_functional_tensor()
    _ddp_without_cuda()
    _APPLIED = True
