"""``TrainingFeatures``: the opt-in training features of an option file's ``train:`` block, parsed once.

``TrainingFeatures.of(opt)`` parses ``opt['train']`` the first time and keeps the result in
``opt['train_features']``; the option parsing (``sr_arch.utils.options``, which fails early on a bad
value), the training pipeline and ``TrainingMixin`` all read that one object. Options built without our
parser (basicsr's own ``train_pipeline``) are parsed on first use the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import torch

from sr_arch.errors import OptionError

AMP_DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}

#: the ``opt`` key holding the parsed features (set by the pipeline, never in an option file)
OPT_KEY = 'train_features'


@dataclass(frozen=True)
class TrainingFeatures:
    """The opt-in training features of an option file's ``train:`` block, validated."""

    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False
    grad_clip_norm: float | None = None
    grad_clip_norm_type: float = 2.0
    accumulate_grad_batches: int = 1
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = 'inductor'
    warmup_iter: int = -1

    @classmethod
    def of(cls, opt: MutableMapping[str, Any]) -> 'TrainingFeatures':
        """The features of ``opt``: ``opt['train_features']``, parsed and stored there on first use."""
        features = opt.get(OPT_KEY)
        if not isinstance(features, cls):
            features = cls.from_options(opt)
            opt[OPT_KEY] = features
        return features

    @classmethod
    def from_options(cls, opt: Mapping[str, Any]) -> 'TrainingFeatures':
        """Parse ``opt['train']``; ``OptionError`` naming the file and key for a bad value."""
        source = opt.get('opt_path', '<options>')
        train = opt.get('train') or {}

        def fail(key: str, expected: str, value: Any) -> None:
            raise OptionError(f'{source}: train.{key} must be {expected}, got {value!r}')

        amp = train.get('amp') or {}
        if not isinstance(amp, Mapping):
            fail('amp', 'a mapping like {enabled: true, dtype: bf16}', amp)
        dtype_name = str(amp.get('dtype', 'bf16')).lower()
        if dtype_name not in AMP_DTYPES:
            fail('amp.dtype', f'one of {sorted(AMP_DTYPES)}', amp.get('dtype'))

        clip = train.get('grad_clip') or {}
        if not isinstance(clip, Mapping):
            fail('grad_clip', 'a mapping like {max_norm: 1.0}', clip)
        max_norm = clip.get('max_norm')
        if max_norm is not None and (not isinstance(max_norm, (int, float)) or max_norm < 0):
            fail('grad_clip.max_norm', 'a number >= 0 (0 or ~ disables clipping)', max_norm)

        accumulate = train.get('accumulate_grad_batches', 1)
        if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
            fail('accumulate_grad_batches', 'an integer >= 1', accumulate)

        compile_opt = train.get('compile') or {}
        if not isinstance(compile_opt, Mapping):
            fail('compile', 'a mapping like {enabled: true, mode: max-autotune-no-cudagraphs}', compile_opt)

        warmup = train.get('warmup_iter', -1)
        if warmup is None:
            warmup = -1
        if not isinstance(warmup, (int, float)):
            fail('warmup_iter', 'an integer (-1: no warm-up)', warmup)

        return cls(amp=bool(amp.get('enabled', False)), amp_dtype=AMP_DTYPES[dtype_name],
                   channels_last=bool(train.get('channels_last', False)),
                   grad_clip_norm=float(max_norm) if max_norm else None,
                   grad_clip_norm_type=float(clip.get('norm_type', 2.0)),
                   accumulate_grad_batches=accumulate, compile=bool(compile_opt.get('enabled', False)),
                   compile_mode=compile_opt.get('mode'), compile_backend=compile_opt.get('backend') or 'inductor',
                   warmup_iter=int(warmup))
