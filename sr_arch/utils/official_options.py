"""The papers' own option files, run as they are: official names resolved, other formats named.

Users arrive with the YAML files of chxy95/HAT, zhengchen1999/RGT, sisrformer/GRFormer and
monakasen/TMM25. ``resolve_official_names(opt, source, is_train)`` rewrites, in place, the names those
files use that cannot run here, and returns one note per rewrite:

* ``network_*.type: LabNetGAN`` (TMM25's RealNet files; registered nowhere) -> ``LabNet``, the RealNet
  network of ``options/train/RealNet/`` (``upscale`` = ``scale`` unless given);
* ``model_type: RealESRNetModel`` / ``RealESRGANModel`` (basicsr's, which call ``.cuda()``) ->
  ``RealSRNetModel`` / ``RealSRGANModel`` when there is no CUDA device or ``num_gpu: 0``: the same
  training, on any device;
* ``train.<x>_opt.type: PerceptualLoss`` (basicsr's; it downloads VGG19 when the file is missing) ->
  ``VGGPerceptualLoss`` (same options and loss; weights read from disk only, missing ones named);
* ``datasets.<phase>.meta_info_file`` for a dataset that reads ``meta_info`` (HAT's Real-HAT files give
  ``RealESRGANDataset`` a ``meta_info_file``) -> ``meta_info``;
* test runs (``is_train=False``): datasets of a ``train`` phase are dropped (a test file copied from a
  training file keeps its training set, whose paths need not exist).

``reject_foreign_format`` stops DAN/IKC-style files (TMM25's ``LabNet/codes/config/LabNet/options/...``)
with an error that names the equivalent file under ``options/``.
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Mapping

import torch
from basicsr.utils.registry import DATASET_REGISTRY

from sr_arch.errors import OptionError
from sr_arch.utils.option_keys import class_option_reads, registered_class

#: official architecture name -> (our registered name, why)
ARCH_ALIASES = {'LabNetGAN': ('LabNet', "monakasen/TMM25's RealNet name, registered nowhere; LabNet is the "
                                        'RealNet network of options/train/RealNet/')}
#: basicsr's CUDA-only Real-ESRGAN models -> ours (same degradation and losses, any device)
CUDA_ONLY_MODELS = {'RealESRNetModel': 'RealSRNetModel', 'RealESRGANModel': 'RealSRGANModel'}
#: basicsr's downloading perceptual loss -> ours (same options, offline)
LOSS_ALIASES = {'PerceptualLoss': 'VGGPerceptualLoss'}
#: DAN/IKC ``network_G.which_model_G`` values that have an equivalent family here
FOREIGN_FAMILIES = {'LabNet_STEA': 'LabNet'}
#: the repository's option folder (equivalent files are named relative to the repository root)
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def equivalent_option_file(family: str, scale: Any, is_train: bool) -> str:
    """``options/train/<family>/train_<family>_SRx<s>.yml`` (or the test file) relative to the repository."""
    if is_train:
        return f'options/train/{family}/train_{family}_SRx{scale}.yml'
    suffix = '_Gaussian8' if family == 'LabNet' else ''
    return f'options/test/{family}/test_{family}_SRx{scale}{suffix}.yml'


def reject_foreign_format(opt: Mapping[str, Any], source: str, is_train: bool) -> None:
    """Raise ``OptionError`` for a DAN/IKC-style option file (``model``, ``network_G.which_model_G``...)."""
    if 'model_type' in opt or not ('network_G' in opt or ('model' in opt and 'distortion' in opt)):
        return
    network = opt.get('network_G') if isinstance(opt.get('network_G'), Mapping) else {}
    which = network.get('which_model_G')
    signature = ', '.join(f'{key}: {value}' for key, value in (('model', opt.get('model')),
                                                              ('network_G.which_model_G', which)) if value)
    family = FOREIGN_FAMILIES.get(str(which))
    if family is None:
        advice = f'sr-arch has no equivalent of network_G.which_model_G {which!r}'
    else:
        advice = (f'the same recipe as a BasicSR option file: '
                  f'{equivalent_option_file(family, opt.get("scale", 4), is_train)}')
    raise OptionError(f'{source}: not a BasicSR option file: a DAN/IKC-style file ({signature}), the format of '
                      f"monakasen/TMM25's LabNet/codes trainer (no model_type, network_g or io_backend); {advice}")


def _cuda_usable(num_gpu: Any) -> bool:
    return torch.cuda.is_available() and num_gpu != 0


def resolve_official_names(opt: dict[str, Any], source: str, is_train: bool) -> list[str]:
    """Rewrite the official names above in ``opt`` (in place); returns one note line per rewrite."""
    notes: list[str] = []
    for key, block in opt.items():
        if str(key).startswith('network_') and isinstance(block, dict) and block.get('type') in ARCH_ALIASES:
            official = block['type']
            ours, why = ARCH_ALIASES[official]
            block['type'] = ours
            if ours == 'LabNet' and 'upscale' not in block and isinstance(opt.get('scale'), int):
                block['upscale'] = opt['scale']
            notes.append(f'{source}: {key}.type: {official} runs as {ours} ({why})')

    model_type = opt.get('model_type')
    if model_type in CUDA_ONLY_MODELS and not _cuda_usable(opt.get('num_gpu', 'auto')):
        opt['model_type'] = CUDA_ONLY_MODELS[model_type]
        notes.append(f"{source}: model_type: {model_type} is basicsr's CUDA-only class and this run has no GPU; "
                     f'running {opt["model_type"]} (the same training and degradation, on the CPU)')

    train = opt.get('train')
    if is_train and isinstance(train, dict):
        for key, block in train.items():
            if str(key).endswith('_opt') and isinstance(block, dict) and block.get('type') in LOSS_ALIASES:
                official = block['type']
                block['type'] = LOSS_ALIASES[official]
                notes.append(f"{source}: train.{key}.type: {official} (basicsr's, downloads VGG weights) runs as "
                             f'{block["type"]} (same loss and options; weights only read from disk)')

    datasets = opt.get('datasets')
    if isinstance(datasets, dict):
        if not is_train:
            for phase in [p for p in datasets if str(p).split('_')[0] == 'train']:
                del datasets[phase]
                notes.append(f'{source}: datasets.{phase}: skipped (a training set; testing runs the other '
                             'datasets)')
        for phase, block in datasets.items():
            if isinstance(block, dict):
                notes += _rename_meta_info_file(block, f'{source}: datasets.{phase}')
    return notes


def _rename_meta_info_file(block: dict[str, Any], where: str) -> list[str]:
    """``meta_info_file`` -> ``meta_info`` for a dataset class that reads only the latter."""
    if 'meta_info_file' not in block or 'meta_info' in block:
        return []
    dataset_class = registered_class(DATASET_REGISTRY, block.get('type'))
    if dataset_class is None:
        return []
    reads = class_option_reads(dataset_class, 'dataset').read()
    if 'meta_info' not in reads or 'meta_info_file' in reads:
        return []
    block['meta_info'] = block.pop('meta_info_file')
    return [f'{where}.meta_info_file: read as meta_info ({dataset_class.__name__} reads meta_info; the file '
            'names it meta_info_file, which it ignores)']
