"""Check an option file before anything runs: unknown keys, wrong types, missing keys, missing paths.

Every problem is one line ``<file>: <dotted key>: <what is wrong>``, for example::

    options/train/x.yml: datasets.train.meta_info_fil: unknown key (did you mean 'meta_info_file'?)

What each block may contain is taken from the code that reads it, not from a hand-kept list:

* ``network_g`` / ``network_d``: the ``__init__`` signature of the registered architecture (any key is
  accepted by a class whose ``__init__`` takes ``**kwargs``); arguments without a default are required;
  a value whose type differs from the default's (a string for a number...) is an error.
* ``datasets.<phase>``: the keys the dataset class hierarchy reads (``sr_arch.utils.option_keys``: its
  source, followed through ``opt``, ``self.opt`` and names assigned from them), plus the dataloader's
  keys. Keys read by subscript in ``__init__`` (and, for the train phase, in ``__getitem__``) and never
  tested for first are required.
* ``train``: the pipeline's keys plus what the model class hierarchy reads from its ``train`` block;
  every ``*_opt`` loss block is checked against its loss class's signature (and a perceptual loss's
  VGG weights must be on disk), ``optim_*`` against the ``torch.optim`` class, ``scheduler`` against
  basicsr's scheduler class.
* ``val`` (``metrics`` against the metric function's named arguments), ``path``, ``logger`` and the
  top level: the pipeline's keys plus what the model class hierarchy reads.

Blocks passed to a class as keyword arguments (networks, losses, optimizers, schedulers, metrics,
``io_backend``) fail on any unknown key, as basicsr would. In blocks read key by key, an unknown key is
either a typo or a key nothing reads, which stock BasicSR ignores (RGT's ``datasets.*.task``, GRFormer's
top-level ``print_network``):

* a near miss of a key that is read (``typo_distance`` <= ``max_typo_distance(key)``: one edit up to
  9 characters, two from 10, ...; an edit is an insertion, deletion, substitution or swap of two
  neighbours, case ignored) is an error with "did you mean";
* any other key, and any key another registered class of the same kind reads, is a warning
  ``<file>: <key>: ignored (...)``.

``validate_options(opt, source, is_train)`` raises ``OptionValidationError`` (an ``OptionError``)
listing every problem, one per line, and returns the warnings; ``option_problems`` returns the problems.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import os.path as osp
import re
from typing import Any, Callable, Iterable, Mapping

import torch
from basicsr.models import lr_scheduler
from basicsr.utils.file_client import FileClient
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from sr_arch.errors import MissingVGGWeightsError, OptionError, OptionValidationError
from sr_arch.losses.perceptual_loss import VGGPerceptualLoss, find_vgg_weights
from sr_arch.utils.option_keys import class_option_reads, registered_class
from sr_arch.utils.training_features import OPT_KEY as TRAIN_FEATURES_KEY

# ---------------------------------------------------------------------------------------------- key tables

#: top-level keys of the pipeline (``*_internal``: set by the option parsing itself)
TOP_LEVEL_KEYS = {'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'deterministic', 'datasets', 'path',
                  'train', 'val', 'logger', 'dist_params', 'find_unused_parameters', 'use_static_graph', 'tile',
                  'pad_multiple'}
TOP_LEVEL_INTERNAL_KEYS = {'opt_path', 'is_train', 'dist', 'rank', 'world_size', 'local_rank', 'auto_resume',
                           'root_path', TRAIN_FEATURES_KEY}
#: keys basicsr's ``build_dataloader`` and our training loop read from a dataset block
DATALOADER_KEYS = {'name', 'type', 'phase', 'scale', 'io_backend', 'batch_size_per_gpu', 'num_worker_per_gpu',
                   'use_shuffle', 'pin_memory', 'persistent_workers', 'prefetch_mode', 'num_prefetch_queue',
                   'dataset_enlarge_ratio', 'skip_bad_images'}
IO_BACKEND_KEYS = {'type', 'db_paths', 'client_keys', 'readonly', 'lock', 'readahead', 'server_list_cfg',
                   'client_cfg', 'sys_path'}
TRAIN_KEYS = {'total_iter', 'warmup_iter', 'ema_decay', 'optim_g', 'optim_d', 'scheduler', 'amp', 'channels_last',
              'grad_clip', 'accumulate_grad_batches', 'compile', 'activation_checkpointing'}
TRAIN_SUBKEYS = {'amp': {'enabled', 'dtype'}, 'grad_clip': {'max_norm', 'norm_type'},
                 'compile': {'enabled', 'mode', 'backend'}}
VAL_KEYS = {'val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'tile', 'self_ensemble', 'tb_images'}
TILE_KEYS = {'tile_size', 'tile_pad', 'batch_size', 'max_memory'}
PATH_KEYS = {'resume_state', 'ignore_resume_networks', 'root', 'experiments_root', 'models', 'training_states',
             'log', 'visualization', 'results_root'}
PATH_NETWORK_PREFIXES = ('pretrain_network_', 'param_key_', 'strict_load_')
LOGGER_KEYS = {'print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb', 'progress_bar'}
WANDB_KEYS = {'project', 'resume_id'}
DIST_PARAMS_KEYS = {'backend', 'port'}
#: arguments the pipeline passes itself (never in the option file)
PIPELINE_ARGUMENTS = {'self', 'params', 'optimizer', 'img', 'img2', 'opt'}

NUMBER = (int, float)
#: expected types of well-known keys ('*' matches one level: a dataset phase)
KEY_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    'name': ((str,), 'a string'),
    'model_type': ((str,), 'a string'),
    'scale': ((int,), 'an integer'),
    'manual_seed': ((int, type(None)), 'an integer'),
    'deterministic': ((bool,), 'true or false'),
    'datasets': ((dict,), 'a mapping of phases'),
    'datasets.*': ((dict,), 'a mapping'),
    'datasets.*.name': ((str,), 'a string'),
    'datasets.*.type': ((str,), 'a string'),
    'datasets.*.batch_size_per_gpu': ((int,), 'an integer'),
    'datasets.*.num_worker_per_gpu': ((int,), 'an integer'),
    'datasets.*.dataset_enlarge_ratio': ((int,), 'an integer'),
    'datasets.*.gt_size': ((int,), 'an integer'),
    'datasets.*.use_hflip': ((bool,), 'true or false'),
    'datasets.*.use_rot': ((bool,), 'true or false'),
    'datasets.*.use_shuffle': ((bool,), 'true or false'),
    'datasets.*.skip_bad_images': ((bool,), 'true or false'),
    'datasets.*.io_backend': ((dict,), 'a mapping like {type: disk}'),
    'datasets.*.dataroot_gt': ((str, list), 'a path (or a list of paths)'),
    'datasets.*.dataroot_lq': ((str, list), 'a path (or a list of paths)'),
    'datasets.*.meta_info_file': ((str, type(None)), 'a path'),
    'datasets.*.filename_tmpl': ((str,), "a string like '{}'"),
    'network_g': ((dict,), 'a mapping with a type'),
    'network_d': ((dict,), 'a mapping with a type'),
    'path': ((dict,), 'a mapping'),
    'train': ((dict,), 'a mapping'),
    'train.total_iter': (NUMBER, 'a number'),
    'train.ema_decay': (NUMBER, 'a number'),
    'train.warmup_iter': (NUMBER + (type(None),), 'a number'),
    'train.optim_g': ((dict,), 'a mapping with a type'),
    'train.optim_d': ((dict,), 'a mapping with a type'),
    'train.scheduler': ((dict,), 'a mapping with a type'),
    'val': ((dict,), 'a mapping'),
    'val.val_freq': (NUMBER, 'a number'),
    'val.save_img': ((bool,), 'true or false'),
    'val.metrics': ((dict,), 'a mapping of metric blocks'),
    'logger': ((dict,), 'a mapping'),
    'logger.print_freq': (NUMBER, 'a number'),
    'logger.save_checkpoint_freq': (NUMBER, 'a number'),
    'logger.use_tb_logger': ((bool,), 'true or false'),
    'path.resume_state': ((str, type(None)), 'a path'),
    'path.strict_load_g': ((bool,), 'true or false'),
    'path.strict_load_d': ((bool,), 'true or false'),
    'path.pretrain_network_g': ((str, type(None)), 'a path'),
    'path.pretrain_network_d': ((str, type(None)), 'a path'),
    'dist_params': ((dict,), 'a mapping'),
}


# ---------------------------------------------------------------------------------------------- keys read by classes

#: dataset keys the pipeline fills in itself (never required from the option file)
SET_BY_PIPELINE = frozenset({'phase', 'scale', 'name'})


@functools.lru_cache(maxsize=None)
def dataset_keys(cls: type) -> tuple[frozenset, frozenset, frozenset]:
    """(known keys, keys required in every phase, keys required for training) of a dataset class."""
    reads = class_option_reads(cls, 'dataset')
    return (reads.read() | DATALOADER_KEYS, reads.required('__init__') - SET_BY_PIPELINE,
            reads.required('__getitem__') - SET_BY_PIPELINE)


@functools.lru_cache(maxsize=None)
def model_keys(cls: type | None) -> dict[str, frozenset]:
    """Keys a model class hierarchy reads: ``{'top': ..., 'train': ..., 'val': ...}`` (empty for None)."""
    if cls is None:
        return {'top': frozenset(), 'train': frozenset(), 'val': frozenset()}
    reads = class_option_reads(cls, 'model')
    return {'top': reads.read(()), 'train': reads.read(('train',)), 'val': reads.read(('val',))}


def keys_read_elsewhere(registry: Any, cls: type | None, keys: Callable[[type], Iterable[str]]) -> frozenset:
    """Keys some other class of ``registry`` reads (``keys(other)``): legitimate keys, so never typos.

    Classes whose source cannot be read are left out here: they only make fewer keys warnings.
    """
    found: set[str] = set()
    for _, other in registry:
        if other is cls:
            continue
        try:
            found.update(keys(other))
        except OptionError:
            continue
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def _dataset_keys_elsewhere(cls: type | None) -> frozenset:
    return keys_read_elsewhere(DATASET_REGISTRY, cls, lambda other: dataset_keys(other)[0])


@functools.lru_cache(maxsize=None)
def _model_keys_elsewhere(cls: type | None, block: str) -> frozenset:
    return keys_read_elsewhere(MODEL_REGISTRY, cls, lambda other: model_keys(other)[block])


# ---------------------------------------------------------------------------------------------- typos


def typo_distance(a: str, b: str) -> int:
    """Edits between ``a`` and ``b`` ignoring case: insertions, deletions, substitutions and swaps of two
    neighbouring characters (optimal string alignment distance)."""
    a, b = a.lower(), b.lower()
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


def max_typo_distance(key: str) -> int:
    """How many edits still make ``key`` a typo of a known key: 1 below 10 characters, 2 from 10."""
    return 1 if len(key) < 10 else 2


def near_miss(key: Any, known: Iterable[str]) -> str | None:
    """The known key ``key`` is a typo of (the closest within ``max_typo_distance``), or None."""
    key = str(key)
    scored = sorted((typo_distance(key, candidate), candidate) for candidate in known)
    if scored and scored[0][0] <= max_typo_distance(key):
        return scored[0][1]
    return None


# ---------------------------------------------------------------------------------------------- checking


def suggestion(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known key, or an empty string."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return f' (did you mean {close[0]!r}?)' if close else ''


def _type_name(value: Any) -> str:
    return 'null' if value is None else type(value).__name__


def describe_mismatch(value: Any, expected: str) -> str:
    hint = ''
    if isinstance(value, str) and re.fullmatch(r'[+-]?\d+[eE][+-]?\d+', value.strip()):
        hint = f'; YAML reads {value} as text (no decimal point): write !!float {value} or e.g. 2.0e-4'
    elif isinstance(value, str) and re.fullmatch(r'[+-]?\d+(\.\d*)?', value.strip()):
        hint = '; write the number without quotes'
    return f'expected {expected}, got {value!r} ({_type_name(value)}){hint}'


def _matches(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    if float in types and isinstance(value, int):
        return True
    if list in types and isinstance(value, tuple):
        return True
    return isinstance(value, types)


_KIND_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string', list: 'a list',
               tuple: 'a list'}


def _default_compatible(value: Any, default: Any) -> bool:
    """Whether ``value`` may replace a parameter's ``default`` (None / unknown defaults accept anything)."""
    if value is None or default is None or default is inspect.Parameter.empty:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        # a tuple/list may stand for a per-axis value (img_size, window_size...)
        return isinstance(value, (int, float, list, tuple)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


class _Checker:
    def __init__(self, source: str, check_paths: bool) -> None:
        self.source = source
        self.check_paths = check_paths
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def report(self, key: str, message: str) -> None:
        self.problems.append(f'{self.source}: {key}: {message}')

    def unknown_keys(self, block: Mapping[str, Any], prefix: str, known: Iterable[str],
                     accepts: Callable[[str], bool] = lambda key: False, where: str = '') -> None:
        """Every key not in ``known`` is an error (blocks passed to a class as keyword arguments)."""
        known = set(known)
        for key in block:
            if key not in known and not accepts(str(key)):
                self.report(f'{prefix}{key}', f'unknown key{where}{suggestion(key, known)}')

    def ignorable_keys(self, block: Mapping[str, Any], prefix: str, known: Iterable[str], readers: str,
                       accepts: Callable[[str], bool] = lambda key: False, read_elsewhere: Iterable[str] = (),
                       where: str = '') -> None:
        """Blocks read key by key: a near miss of a ``known`` key is an error, any other unknown key a warning
        (``readers`` names what reads the block, for the warning)."""
        known, read_elsewhere = set(known), set(read_elsewhere)
        for key in block:
            if key in known or accepts(str(key)):
                continue
            typo_of = None if key in read_elsewhere else near_miss(key, known)
            if typo_of is not None:
                self.report(f'{prefix}{key}', f'unknown key{where} (did you mean {typo_of!r}?)')
            else:
                self.warnings.append(f'{self.source}: {prefix}{key}: ignored (not read by {readers})')

    def types(self, block: Mapping[str, Any], prefix: str, pattern_prefix: str) -> None:
        for key, value in block.items():
            rule = KEY_TYPES.get(f'{pattern_prefix}{key}')
            if rule is not None and value is not None and not _matches(value, rule[0]):  # ~: the default
                self.report(f'{prefix}{key}', describe_mismatch(value, rule[1]))

    def signature(self, block: Mapping[str, Any], prefix: str, target: Callable, label: str,
                  extra: Iterable[str] = ('type',), ignore_var_keyword: bool = False) -> None:
        """Keys of ``block`` against the arguments of ``target``; missing required arguments; default types."""
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return
        named = {name: p for name, p in parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in PIPELINE_ARGUMENTS}
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values()) and not ignore_var_keyword
        if not takes_kwargs:
            self.unknown_keys(block, prefix, set(named) | set(extra), where=f' for {label}')
        for name, parameter in named.items():
            if parameter.default is parameter.empty and name not in block:
                self.report(f'{prefix}{name}', f'missing required key ({label} has no default for it)')
            elif name in block and not _default_compatible(block[name], parameter.default):
                self.report(f'{prefix}{name}', describe_mismatch(
                    block[name], f'{_KIND_NAMES.get(type(parameter.default), "a value")} like the '
                    f'default {parameter.default!r} of {label}'))

    def registered(self, registry: Any, type_name: Any, key: str, what: str) -> Any:
        if not isinstance(type_name, str):
            self.report(key, f'missing or not a string (the registered {what} name), got {type_name!r}')
            return None
        found = registered_class(registry, type_name)  # basicsr's '<name>_basicsr' fallback, quietly
        if found is None:
            self.report(key, f'{type_name!r} is not a registered {what}{suggestion(type_name, registry.keys())}')
        return found

    def path_exists(self, key: str, value: Any, kind: str = 'path') -> None:
        if not self.check_paths or value is None:
            return
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(path, str) and not osp.exists(osp.expanduser(path)):
                self.report(key, f'{kind} {path!r} does not exist')


def _check_network(checker: _Checker, opt: Mapping[str, Any], label: str) -> None:
    block = opt[label]
    if not isinstance(block, Mapping):
        checker.report(label, describe_mismatch(block, 'a mapping with a type'))
        return
    arch = checker.registered(ARCH_REGISTRY, block.get('type'), f'{label}.type', 'architecture')
    if arch is not None:
        checker.signature(block, f'{label}.', arch.__init__, f'{arch.__name__}.__init__')


def _check_datasets(checker: _Checker, datasets: Mapping[str, Any], is_train: bool) -> None:
    if is_train and 'train' not in datasets:
        checker.report('datasets.train', 'missing required key (training needs a train dataset)')
    for phase, block in datasets.items():
        prefix = f'datasets.{phase}.'
        if not isinstance(block, Mapping):
            checker.report(f'datasets.{phase}', describe_mismatch(block, 'a mapping'))
            continue
        checker.types(block, prefix, 'datasets.*.')
        dataset_class = checker.registered(DATASET_REGISTRY, block.get('type'), f'{prefix}type', 'dataset')
        train_phase = str(phase).split('_')[0] == 'train'
        known: frozenset = frozenset()
        if dataset_class is not None:
            known, required, required_train = dataset_keys(dataset_class)
            checker.ignorable_keys(block, prefix, known, dataset_class.__name__,
                                   read_elsewhere=_dataset_keys_elsewhere(dataset_class),
                                   where=f' for {dataset_class.__name__}')
            needed = set(required) | (set(required_train) if train_phase and is_train else set())
            for key in sorted(needed - set(block)):
                checker.report(f'{prefix}{key}', f'missing required key ({dataset_class.__name__} reads it)')
        if train_phase and is_train:
            for key in ('batch_size_per_gpu', 'num_worker_per_gpu'):
                if key not in block:
                    checker.report(f'{prefix}{key}', 'missing required key (the train dataloader needs it)')
        backend = block.get('io_backend')
        if isinstance(backend, Mapping):  # basicsr passes it to the backend class as keyword arguments
            checker.unknown_keys(backend, f'{prefix}io_backend.', IO_BACKEND_KEYS)
            if backend.get('type') not in FileClient._backends:
                checker.report(f'{prefix}io_backend.type', f'must be one of {sorted(FileClient._backends)}, got '
                               f'{backend.get("type")!r}{suggestion(str(backend.get("type")), FileClient._backends)}')
        for key, value in block.items():
            if dataset_class is not None and key not in known:
                continue  # reported above, or ignored
            if str(key).startswith('dataroot'):
                checker.path_exists(f'{prefix}{key}', value, 'folder')
            elif str(key).startswith('meta_info') and isinstance(value, str):
                checker.path_exists(f'{prefix}{key}', value, 'file')


def _check_perceptual_weights(checker: _Checker, loss: type, block: Mapping[str, Any], key: str) -> None:
    """A VGG perceptual loss needs its weights on disk (nothing is downloaded): report where to put them."""
    if not (checker.check_paths and issubclass(loss, VGGPerceptualLoss) and block.get('pretrained', True)):
        return
    try:
        find_vgg_weights(str(block.get('vgg_type', 'vgg19')), block.get('weights_path'), key=key)
    except (MissingVGGWeightsError, ValueError) as err:
        checker.problems.append(f'{checker.source}: {err}')


def _check_train(checker: _Checker, train: Mapping[str, Any], model_class: type | None) -> None:
    known = TRAIN_KEYS | model_keys(model_class)['train']
    readers = f'sr-arch or {model_class.__name__}' if model_class is not None else 'sr-arch'
    checker.ignorable_keys(train, 'train.', known, readers, read_elsewhere=_model_keys_elsewhere(model_class, 'train'))
    checker.types(train, 'train.', 'train.')
    if 'total_iter' not in train:
        checker.report('train.total_iter', 'missing required key')
    for key, subkeys in TRAIN_SUBKEYS.items():
        if isinstance(train.get(key), Mapping):
            checker.ignorable_keys(train[key], f'train.{key}.', subkeys, 'sr-arch')
    for key, block in train.items():
        prefix = f'train.{key}.'
        if not isinstance(block, Mapping) or key not in known:
            continue
        if str(key).endswith('_opt'):
            loss = checker.registered(LOSS_REGISTRY, block.get('type'), f'{prefix}type', 'loss')
            if loss is not None:
                checker.signature(block, prefix, loss.__init__, f'{loss.__name__}.__init__')
                _check_perceptual_weights(checker, loss, block, f'train.{key}')
        elif str(key).startswith('optim_'):
            optimizer = getattr(torch.optim, str(block.get('type')), None)
            if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
                names = [n for n, c in vars(torch.optim).items()
                         if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)]
                checker.report(f'{prefix}type', f'{block.get("type")!r} is not a torch.optim optimizer'
                               f'{suggestion(str(block.get("type")), names)}')
            else:
                checker.signature(block, prefix, optimizer.__init__, f'torch.optim.{optimizer.__name__}')
        elif key == 'scheduler':
            name = {'MultiStepLR': 'MultiStepRestartLR'}.get(block.get('type'), block.get('type'))
            names = ['MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR']
            scheduler = getattr(lr_scheduler, str(name), None) if name in names else None
            if scheduler is None:
                checker.report(f'{prefix}type', f'must be one of {names}, got {block.get("type")!r}'
                               f'{suggestion(str(block.get("type")), names)}')
            else:
                checker.signature(block, prefix, scheduler.__init__, f'{scheduler.__name__}')


def _check_val(checker: _Checker, val: Mapping[str, Any], model_class: type | None) -> None:
    readers = f'sr-arch or {model_class.__name__}' if model_class is not None else 'sr-arch'
    checker.ignorable_keys(val, 'val.', VAL_KEYS | model_keys(model_class)['val'], readers,
                           read_elsewhere=_model_keys_elsewhere(model_class, 'val'))
    checker.types(val, 'val.', 'val.')
    if isinstance(val.get('tile'), Mapping):  # TileOptions refuses unknown keys
        checker.unknown_keys(val['tile'], 'val.tile.', TILE_KEYS)
    for name, block in (val.get('metrics') or {}).items() if isinstance(val.get('metrics'), Mapping) else ():
        prefix = f'val.metrics.{name}.'
        if not isinstance(block, Mapping):
            checker.report(f'val.metrics.{name}', describe_mismatch(block, 'a mapping with a type'))
            continue
        metric = checker.registered(METRIC_REGISTRY, block.get('type'), f'{prefix}type', 'metric')
        if metric is not None:
            # basicsr passes the whole block to the metric; its **kwargs only swallows 'better'
            checker.signature(block, prefix, metric, metric.__name__, extra=('type', 'better'),
                              ignore_var_keyword=True)
        if block.get('better', 'higher') not in ('higher', 'lower'):
            checker.report(f'{prefix}better', f"must be 'higher' or 'lower', got {block.get('better')!r}")


def _check_path(checker: _Checker, path: Mapping[str, Any], opt: Mapping[str, Any]) -> None:
    checker.ignorable_keys(path, 'path.', PATH_KEYS | {f'{p}g' for p in PATH_NETWORK_PREFIXES}, 'sr-arch',
                           accepts=lambda key: key.startswith(PATH_NETWORK_PREFIXES)
                           and f'network_{key.rsplit("_", 1)[-1]}' in opt)
    checker.types(path, 'path.', 'path.')
    for key, value in path.items():
        if str(key).startswith('pretrain_network_') and isinstance(value, str):
            checker.path_exists(f'path.{key}', value, 'file')
    if isinstance(path.get('resume_state'), str) and not opt.get('auto_resume'):
        checker.path_exists('path.resume_state', path['resume_state'], 'file')


def option_problems(opt: Mapping[str, Any], source: str, is_train: bool = True, check_paths: bool = True
                    ) -> list[str]:
    """Every problem of the option mapping ``opt`` read from ``source``, one line each (empty: valid)."""
    return _check_all(opt, source, is_train, check_paths).problems


def _check_all(opt: Mapping[str, Any], source: str, is_train: bool, check_paths: bool) -> _Checker:
    checker = _Checker(source, check_paths)
    model_class = None
    if 'model_type' in opt:
        model_class = checker.registered(MODEL_REGISTRY, opt['model_type'], 'model_type', 'model')
    else:
        checker.report('model_type', 'missing required key')
    readers = f'sr-arch or {model_class.__name__}' if model_class is not None else 'sr-arch'

    checker.ignorable_keys(opt, '', TOP_LEVEL_KEYS | TOP_LEVEL_INTERNAL_KEYS | {'network_g', 'network_d'}
                           | model_keys(model_class)['top'], readers,
                           accepts=lambda key: key.startswith('network_'),
                           read_elsewhere=_model_keys_elsewhere(model_class, 'top'))
    checker.types(opt, '', '')
    for key in ('name', 'network_g') + (('scale',) if not is_train else ()):
        if key not in opt:
            checker.report(key, 'missing required key')
    for key in opt:
        if str(key).startswith('network_'):
            _check_network(checker, opt, str(key))
    if isinstance(opt.get('datasets'), Mapping):
        _check_datasets(checker, opt['datasets'], is_train)
    elif is_train and 'datasets' not in opt:
        checker.report('datasets', 'missing required key')
    if is_train:
        if isinstance(opt.get('train'), Mapping):
            _check_train(checker, opt['train'], model_class)
        elif 'train' not in opt:
            checker.report('train', 'missing required key')
    if isinstance(opt.get('val'), Mapping):
        _check_val(checker, opt['val'], model_class)
    if isinstance(opt.get('path'), Mapping):
        _check_path(checker, opt['path'], opt)
    if isinstance(opt.get('logger'), Mapping):
        checker.ignorable_keys(opt['logger'], 'logger.', LOGGER_KEYS, 'sr-arch')
        checker.types(opt['logger'], 'logger.', 'logger.')
        if isinstance(opt['logger'].get('wandb'), Mapping):
            checker.ignorable_keys(opt['logger']['wandb'], 'logger.wandb.', WANDB_KEYS, 'sr-arch')
    if isinstance(opt.get('dist_params'), Mapping):
        checker.ignorable_keys(opt['dist_params'], 'dist_params.', DIST_PARAMS_KEYS, 'sr-arch')
    if isinstance(opt.get('tile'), Mapping):  # TileOptions refuses unknown keys
        checker.unknown_keys(opt['tile'], 'tile.', TILE_KEYS)
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto' and not (isinstance(num_gpu, int) and not isinstance(num_gpu, bool)):
        checker.report('num_gpu', describe_mismatch(num_gpu, "'auto' or an integer"))
    return checker


def validate_options(opt: Mapping[str, Any], source: str, is_train: bool = True, check_paths: bool = True
                     ) -> list[str]:
    """Raise ``OptionValidationError`` (one line per problem) unless ``opt`` is a valid option mapping.

    Returns the warnings (keys nothing here reads, which stock BasicSR ignores too), one line each.
    """
    checker = _check_all(opt, source, is_train, check_paths)
    if checker.problems:
        raise OptionValidationError('\n'.join(checker.problems))
    return checker.warnings
