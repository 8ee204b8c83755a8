"""Compatibility fixes for basicsr 1.4.2 on current torch / torchvision.

Everything that patches basicsr lives here, is applied once on ``import sr_arch`` and is listed below,
one line per fix:

1. ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17; basicsr's
   ``data/degradations.py`` imports ``rgb_to_grayscale`` from it (BasicSR #663). We alias the module.
2. ``BaseModel.model_to_device`` gives DDP ``device_ids=[torch.cuda.current_device()]`` even on CPU: basicsr's
   own models crashed under torchrun with gloo ("Found no NVIDIA driver"); on CPU we wrap without device ids.
3. ``BaseModel.load_network`` indexes the checkpoint with its param key: an EMA network initialised from a plain
   state_dict (``SRModel`` loads ``pretrain_network_g`` into ``net_g_ema`` with key ``params_ema``; TMM25's
   ``LabNetx4.pth`` has no key) raised ``KeyError: 'params_ema'``; such a checkpoint now loads as it is.
   (Our models override ``load_network`` already; this is for basicsr's own, e.g. ``RealESRGANModel`` on GPU.)
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


def _plain_state_dict_loading() -> None:
    import torch
    from basicsr.models.base_model import BaseModel

    original = BaseModel.load_network
    if getattr(original, '_sr_arch_plain_state_dict', False):
        return

    def load_network(self, net, load_path, strict=True, param_key='params'):
        if param_key is not None:
            checkpoint = torch.load(load_path, map_location='cpu', weights_only=True)
            if isinstance(checkpoint, dict) and param_key not in checkpoint and 'params' not in checkpoint \
                    and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
                param_key = None  # a plain state_dict: the weights are the checkpoint itself
        return original(self, net, load_path, strict, param_key)

    load_network._sr_arch_plain_state_dict = True
    BaseModel.load_network = load_network


def apply() -> None:
    """Apply every fix once. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_functional_tensor()
    _ddp_without_cuda()
    _plain_state_dict_loading()
    _APPLIED = True
