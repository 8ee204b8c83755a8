"""Option files and the command line of ``train.py`` / ``sr-arch train`` (BasicSR's schema and flags).

``parse_options`` returns basicsr's ``opt`` dict (``dist``, ``rank``, ``world_size``, ``num_gpu``,
``is_train``, ``auto_resume``, derived ``path`` entries…) after:

* ``--force_yml a:b=value`` / ``a.b=value`` overrides (values parsed as YAML; ``none``/``~`` is None; empty
  and malformed values are refused naming the override);
* ``num_gpu: auto`` -> the number of visible GPUs (0 on a CPU-only machine: train on the CPU);
* ``--launcher pytorch|slurm`` -> torch.distributed initialised (NCCL on GPUs, gloo on CPUs);
  torchrun's ``--local-rank`` and ``--local_rank`` are both accepted;
* seeding every rank with ``manual_seed + rank`` (a random seed is drawn once and shared by all ranks);
* ``deterministic: true`` -> deterministic algorithms (bit-reproducible runs and resumes on CPU);
* checking the keys the pipeline needs, with errors naming the file and the key.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import random
import re
import sys
from typing import Any

import torch
import yaml

from sr_arch.utils import dist as dist_utils


class OptionError(ValueError):
    """An option file or command-line value is missing or invalid; the message names file and key."""


def command_name(is_train: bool) -> str:
    """How the user called us, for ``usage:`` lines: ``train.py`` / ``test.py`` or ``sr-arch train|test``."""
    script = osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    if script in ('train.py', 'test.py'):
        return script
    return 'sr-arch train' if is_train else 'sr-arch test'


def build_arg_parser(is_train: bool = True) -> argparse.ArgumentParser:
    """BasicSR's command line; ``--auto_resume`` and ``--debug`` exist for training only."""
    parser = argparse.ArgumentParser(prog=command_name(is_train),
                                     description='BasicSR-compatible ' + ('training' if is_train else 'testing'))
    parser.add_argument('-opt', required=True, help='path to the option YAML file')
    parser.add_argument('--launcher', choices=dist_utils.LAUNCHERS, default='none',
                        help='none: one process; pytorch: under torchrun; slurm: under srun')
    if is_train:
        parser.add_argument('--auto_resume', action='store_true',
                            help='continue experiments/<name> from its newest complete checkpoint (nothing to '
                                 'resume: start from iteration 0, said in the log)')
        parser.add_argument('--debug', action='store_true',
                            help="name prefixed 'debug_', print every iteration, validate/save every 8")
    parser.add_argument('--local_rank', '--local-rank', dest='local_rank', type=int, default=None,
                        help='set by torch.distributed.launch; torchrun passes LOCAL_RANK in the environment')
    examples = ('train:ema_decay=0.999, datasets.train.batch_size_per_gpu=2' if is_train
                else 'val:self_ensemble=true, path.pretrain_network_g=net.pth')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help=f'override options; keys separated by : or . ({examples}); values in YAML '
                             '(~ for none)')
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    if not osp.isfile(path):
        raise OptionError(f'option file not found: {path}')
    with open(path) as f:
        try:
            opt = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise OptionError(f'{path}: not valid YAML: {err}') from err
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of options at the top level, found {type(opt).__name__}')
    return opt


_NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?')


def parse_yml_value(text: str, entry: str = '') -> Any:
    """A ``--force_yml`` value: YAML scalars/lists (``1e-4``, ``[1, 2]``, ``true``), ``none``/``~`` -> None.

    Raises:
        OptionError: an empty value, or text that is not YAML (the message quotes ``entry``).
    """
    text = text.strip()
    if not text:
        raise OptionError(f'--force_yml {entry!r}: empty value; give one, or ~ for none')
    if text.lower() == 'none':
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise OptionError(f'--force_yml {entry!r}: {text!r} is not a YAML value ({problem}); quote a string '
                          "that contains YAML characters, e.g. name='a: b'") from None
    if isinstance(value, str) and _NUMBER.fullmatch(value):  # YAML 1.1 reads '1e-4' as a string
        return float(value)
    return value


def split_override_key(keys_text: str, opt: dict[str, Any], entry: str) -> list[str]:
    """``a:b:c`` or ``a.b.c`` -> ``['a', 'b', 'c']``.

    With ``:`` the key is split on ``:`` only (so keys containing dots stay whole); a dotted key
    prefers the longest existing key at each level (``datasets.val_sig1.80.name``), and splits on every
    remaining dot below keys that do not exist yet.
    """
    text = keys_text.strip()
    if ':' in text:
        keys = [k.strip() for k in text.split(':')]
    else:
        pieces = [k.strip() for k in text.split('.')]
        keys, node, start = [], opt, 0
        while start < len(pieces):
            end = start + 1
            if isinstance(node, dict):
                for stop in range(len(pieces), start, -1):
                    if '.'.join(pieces[start:stop]) in node:
                        end = stop
                        break
            key = '.'.join(pieces[start:end])
            keys.append(key)
            node = node.get(key) if isinstance(node, dict) else None
            start = end
    if not all(keys):
        raise OptionError(f'--force_yml {entry!r}: empty key in {text!r}; write KEY=VALUE with keys separated by '
                          ': or ., e.g. train:ema_decay=0.999 or train.ema_decay=0.999')
    return keys


def apply_force_yml(opt: dict[str, Any], entries: list[str], source: str) -> list[str]:
    """Apply ``a:b:c=value`` / ``a.b.c=value`` overrides in place; returns the (dotted) keys that did not exist.

    Every entry is checked before ``opt`` is changed: a bad one leaves ``opt`` as it was.
    """
    parsed = []
    for entry in entries:
        if '=' not in entry:
            raise OptionError(f'--force_yml {entry!r}: expected KEY=VALUE, e.g. train:ema_decay=0.999')
        keys_text, value_text = entry.split('=', 1)
        parsed.append((entry, split_override_key(keys_text, opt, entry), parse_yml_value(value_text, entry)))
    created = []
    updated = copy.deepcopy(opt)
    for entry, keys, value in parsed:
        node = updated
        for depth, key in enumerate(keys[:-1]):
            if key not in node or node[key] is None:
                node[key] = {}
                created.append('.'.join(keys[:depth + 1]))
            if not isinstance(node[key], dict):
                raise OptionError(f"--force_yml {entry!r}: {'.'.join(keys[:depth + 1])} in {source} is "
                                  f'{node[key]!r}, not a mapping')
            node = node[key]
        if keys[-1] not in node:
            created.append('.'.join(keys))
        node[keys[-1]] = value
    opt.clear()
    opt.update(updated)
    return created


def require(opt: dict[str, Any], dotted: str, source: str) -> Any:
    node: Any = opt
    for key in dotted.split('.'):
        if not isinstance(node, dict) or node.get(key) is None:
            raise OptionError(f'{source}: missing required option {dotted}')
        node = node[key]
    return node


def resolve_num_gpu(value: Any, source: str) -> int:
    """``auto`` -> visible GPUs; an explicit count must not exceed them (0 = CPU)."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value is None or value == 'auto':
        return available
    try:
        count = int(value)
    except (TypeError, ValueError) as err:
        raise OptionError(f"{source}: num_gpu must be 'auto' or an integer, got {value!r}") from err
    if count < 0:
        raise OptionError(f'{source}: num_gpu must be >= 0, got {count}')
    if count > available:
        raise OptionError(f'{source}: num_gpu: {count} but only {available} GPU(s) are visible; '
                          "use num_gpu: auto (0 GPUs means training on the CPU)")
    return count


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (cuDNN without autotuning); otherwise cuDNN benchmark mode as in basicsr.

    Ops without a deterministic CUDA kernel (e.g. the backward of reflect padding) warn instead of failing.
    """
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parse_options(root_path: str, is_train: bool = True, argv: list[str] | None = None
                  ) -> tuple[dict[str, Any], argparse.Namespace]:
    """Parse the command line (``argv``, default ``sys.argv[1:]``) and the option file it names."""
    args = build_arg_parser(is_train).parse_args(argv)
    source = args.opt
    opt = load_yaml(source)
    opt['opt_path'] = osp.abspath(source)
    if args.force_yml:
        for key in apply_force_yml(opt, args.force_yml, source):
            print(f'--force_yml created {key} (not in {source})', flush=True)

    require(opt, 'name', source)
    require(opt, 'network_g.type', source)
    from sr_arch.utils.option_validation import validate_options

    for warning in validate_options(opt, source, is_train=is_train):  # unknown keys, types, paths: fail now
        print(f'warning: {warning}', flush=True)
    opt.setdefault('path', {})
    opt['num_gpu'] = resolve_num_gpu(opt.get('num_gpu', 'auto'), source)

    dist_utils.check_not_launched_by_torchrun(args.launcher)
    if args.launcher == 'none':
        opt['dist'] = False
        opt['rank'], opt['world_size'], opt['local_rank'] = 0, 1, 0
    else:
        dist_params = opt.get('dist_params') or {}
        info = dist_utils.init_distributed(args.launcher, backend=dist_params.get('backend', 'nccl'),
                                           port=dist_params.get('port'), use_cuda=opt['num_gpu'] > 0)
        opt['dist'] = True
        opt['rank'], opt['world_size'], opt['local_rank'] = info.rank, info.world_size, info.local_rank

    seed = opt.get('manual_seed')
    if seed is None:
        seed = dist_utils.broadcast_object(random.randint(1, 10000))
    opt['manual_seed'] = int(seed)
    seed_everything(opt['manual_seed'] + opt['rank'])
    set_deterministic(bool(opt.get('deterministic', False)))

    opt['auto_resume'] = bool(getattr(args, 'auto_resume', False))
    opt['is_train'] = is_train
    if getattr(args, 'debug', False) and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']

    datasets = opt.get('datasets') or {}
    if is_train and 'train' not in datasets:
        raise OptionError(f'{source}: missing required option datasets.train')
    for phase, dataset in datasets.items():
        if not isinstance(dataset, dict):
            raise OptionError(f'{source}: datasets.{phase} must be a mapping, found {dataset!r}')
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if isinstance(dataset.get(key), str):
                dataset[key] = osp.expanduser(dataset[key])
    opt['datasets'] = datasets

    for key, value in opt['path'].items():
        if value is not None and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = osp.expanduser(value)

    if is_train:
        require(opt, 'train.total_iter', source)
        logger_opt = opt.setdefault('logger', {})
        logger_opt.setdefault('print_freq', 100)
        logger_opt.setdefault('save_checkpoint_freq', 5000)
        logger_opt.setdefault('use_tb_logger', False)
        experiments_root = osp.join(root_path, 'experiments', opt['name'])
        opt['path'].update(experiments_root=experiments_root, models=osp.join(experiments_root, 'models'),
                           training_states=osp.join(experiments_root, 'training_states'), log=experiments_root,
                           visualization=osp.join(experiments_root, 'visualization'))
        if 'debug' in opt['name']:
            if opt.get('val'):
                opt['val']['val_freq'] = 8
            logger_opt['print_freq'] = 1
            logger_opt['save_checkpoint_freq'] = 8
        from sr_arch.models.training import TrainingFeatures
        TrainingFeatures.from_options(opt)  # fail now, before datasets are built, on a bad training key
        apply_activation_checkpointing(opt, source)
    else:
        results_root = osp.join(root_path, 'results', opt['name'])
        opt['path'].update(results_root=results_root, log=results_root,
                           visualization=osp.join(results_root, 'visualization'))
    return opt, args


#: constructor arguments that switch on activation checkpointing in the networks of this package
CHECKPOINT_ARGUMENTS = ('use_checkpoint', 'use_chk')


def apply_activation_checkpointing(opt: dict[str, Any], source: str) -> None:
    """``train.activation_checkpointing: true`` -> the network's own flag (HAT/GRFormer ``use_checkpoint``,
    RGT ``use_chk``) set in ``network_g``; an error when the network has none."""
    if not (opt.get('train') or {}).get('activation_checkpointing'):
        return
    import inspect

    from basicsr.utils.registry import ARCH_REGISTRY

    arch_type = opt['network_g']['type']
    try:
        arch = ARCH_REGISTRY.get(arch_type)
    except KeyError as err:
        raise OptionError(f'{source}: network_g.type {arch_type!r} is not a registered architecture') from err
    parameters = inspect.signature(arch.__init__).parameters
    flags = [name for name in CHECKPOINT_ARGUMENTS if name in parameters]
    if not flags:
        raise OptionError(f'{source}: train.activation_checkpointing is set but network_g.type {arch_type} has no '
                          f'{" / ".join(CHECKPOINT_ARGUMENTS)} argument')
    opt['network_g'][flags[0]] = True
