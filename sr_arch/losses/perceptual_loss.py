"""``VGGPerceptualLoss``: basicsr's ``PerceptualLoss`` that never downloads and fails clearly without weights.

basicsr 1.4.2's ``VGGFeatureExtractor`` loads ``experiments/pretrained_models/vgg19-dcbb9e9d.pth`` (relative
to the current directory) or else asks torchvision for ``pretrained=True``, which downloads the file:
on a machine without network that is a long hang followed by a ``URLError``. Here the weights file is
looked up in a fixed order and only read from disk (``weights_only``):

1. ``weights_path`` from the loss options, if given;
2. basicsr's ``VGG_PRETRAIN_PATH`` (``experiments/pretrained_models/<file>``, relative to the current directory);
3. torchvision's cache, ``<torch.hub.get_dir()>/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints``,
   default ``~/.cache/torch/hub/checkpoints``), where ``<file>`` is torchvision's name, e.g. ``vgg19-dcbb9e9d.pth``.

If none exists, ``MissingVGGWeightsError`` lists the paths and the download URL. ``pretrained: false`` builds
an untrained VGG (for tests and smoke runs only: the loss then carries no perceptual meaning).
Only the ``features.*`` tensors up to the deepest layer in ``layer_weights`` are needed in the file.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping

import torch
from basicsr.archs import vgg_arch
from basicsr.archs.vgg_arch import NAMES, VGGFeatureExtractor, insert_bn
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn

from sr_arch.errors import CheckpointError, MissingVGGWeightsError, OptionError
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

CRITERIA = {'l1': nn.L1Loss, 'l2': nn.MSELoss}


def torchvision_weights_url(vgg_type: str) -> str:
    """The URL torchvision downloads ``vgg_type``'s ImageNet weights from."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(vgg_type).IMAGENET1K_V1.url
    except (ValueError, AttributeError) as err:
        raise OptionError(f'perceptual_opt.vgg_type {vgg_type!r} is not a torchvision VGG '
                         f'(vgg11, vgg13, vgg16, vgg19 and their _bn versions)') from err


def vgg_weight_candidates(vgg_type: str, weights_path: str | None = None) -> list[str]:
    """Where the weights are looked for, in order (see the module docstring)."""
    file_name = os.path.basename(torchvision_weights_url(vgg_type))
    candidates = [weights_path] if weights_path else []
    candidates.append(os.path.join(os.path.dirname(vgg_arch.VGG_PRETRAIN_PATH), file_name))
    candidates.append(os.path.join(torch.hub.get_dir(), 'checkpoints', file_name))
    return candidates


def find_vgg_weights(vgg_type: str, weights_path: str | None = None, key: str = 'train.perceptual_opt') -> str:
    """The first existing weights file of ``vgg_weight_candidates`` (``key``: the loss block, for messages).

    Raises:
        MissingVGGWeightsError: none exists; the message names every path and the download URL.
    """
    candidates = vgg_weight_candidates(vgg_type, weights_path)
    for path in candidates:
        if os.path.isfile(path):
            return path
    if weights_path:
        raise MissingVGGWeightsError(f'{key}.weights_path {weights_path}: no such file')
    url = torchvision_weights_url(vgg_type)
    looked = ', '.join(os.path.abspath(path) for path in candidates)
    raise MissingVGGWeightsError(
        f'{vgg_type} weights for the perceptual loss ({key}) not found; looked at: {looked}. '
        f'Nothing is downloaded: get {url} and put it at {os.path.abspath(candidates[-1])} (torchvision\'s cache, '
        f'$TORCH_HOME/hub/checkpoints) or {candidates[-2]} (basicsr\'s VGG_PRETRAIN_PATH, relative to the '
        f'directory you train in), or set {key}.weights_path')


class OfflineVGGFeatureExtractor(VGGFeatureExtractor):
    """basicsr's ``VGGFeatureExtractor`` (same forward, layer names and input normalisation) whose weights
    come from a local file, or stay at random initialisation when ``weights_path`` is None."""

    def __init__(self, layer_name_list: list[str], vgg_type: str = 'vgg19', use_input_norm: bool = True,
                 range_norm: bool = False, weights_path: str | None = None) -> None:
        import torchvision

        nn.Module.__init__(self)
        self.layer_name_list = layer_name_list
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        names = NAMES[vgg_type.replace('_bn', '')]
        self.names = insert_bn(names) if 'bn' in vgg_type else names
        unknown = [name for name in layer_name_list if name not in self.names]
        if unknown:
            raise OptionError(f'perceptual_opt.layer_weights: {unknown} are not layers of {vgg_type} '
                             f'(e.g. {self.names[:4]})')
        depth = max(self.names.index(name) for name in layer_name_list) + 1
        features = getattr(torchvision.models, vgg_type)(weights=None).features[:depth]
        if weights_path is not None:
            state = extract_state_dict(load_checkpoint(weights_path), None, source=weights_path)
            wanted = {name[len('features.'):]: tensor for name, tensor in state.items()
                      if name.startswith('features.') and name[len('features.'):] in features.state_dict()}
            missing = sorted(set(features.state_dict()) - set(wanted))
            if missing:
                raise CheckpointError(f'{weights_path}: not {vgg_type} weights, missing features.{missing[0]} '
                                      f'(and {len(missing) - 1} more)')
            features.load_state_dict(wanted)
        self.vgg_net = nn.Sequential(OrderedDict(
            (name, nn.MaxPool2d(kernel_size=2, stride=2) if 'pool' in name else layer)
            for name, layer in zip(self.names, features)))
        self.vgg_net.eval()
        for param in self.parameters():
            param.requires_grad = False
        if use_input_norm:  # ImageNet statistics for images in [0, 1]
            self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> 'OfflineVGGFeatureExtractor':
        """The VGG stays in eval mode (it is frozen; basicsr's extractor stayed in eval too)."""
        super().train(mode)
        self.vgg_net.eval()
        return self


@LOSS_REGISTRY.register()
class VGGPerceptualLoss(PerceptualLoss):
    """basicsr's ``PerceptualLoss`` (same options and forward) with offline VGG weights.

    Extra options: ``pretrained`` (default true; false: untrained VGG, tests only) and ``weights_path``.
    Forward: SR and GT (B, 3, H, W) in [0, 1] -> (perceptual loss or None, style loss or None), scalars.
    """

    def __init__(self, layer_weights: Mapping[str, float], vgg_type: str = 'vgg19', use_input_norm: bool = True,
                 range_norm: bool = False, perceptual_weight: float = 1.0, style_weight: float = 0.0,
                 criterion: str = 'l1', pretrained: bool = True, weights_path: str | None = None) -> None:
        nn.Module.__init__(self)
        if not layer_weights:
            raise OptionError('perceptual_opt.layer_weights must name at least one VGG layer, e.g. {conv5_4: 1.0}')
        if criterion not in (*CRITERIA, 'fro'):
            raise OptionError(f"perceptual_opt.criterion must be 'l1', 'l2' or 'fro', got {criterion!r}")
        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.layer_weights = dict(layer_weights)
        source = find_vgg_weights(vgg_type, weights_path) if pretrained else None
        self.weights_source = source
        self.vgg = OfflineVGGFeatureExtractor(list(layer_weights), vgg_type, use_input_norm, range_norm, source)
        self.criterion_type = criterion
        self.criterion = CRITERIA[criterion]() if criterion in CRITERIA else None

    def forward(self, x: Tensor, gt: Tensor) -> tuple[Tensor | None, Tensor | None]:
        return super().forward(x, gt)
