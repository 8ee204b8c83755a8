"""Option files and the command line of ``train.py`` / ``sr-arch train`` (BasicSR's schema and flags).

``parse_options`` returns basicsr's ``opt`` dict (``dist``, ``rank``, ``world_size``, ``num_gpu``,
``is_train``, ``auto_resume``, derived ``path`` entries…) after:

* ``--force_yml a:b=value`` / ``a.b=value`` overrides (values parsed as YAML; ``none``/``~`` is None; empty
  and malformed values are refused naming the override); a dataset set to None (``--force_yml
  datasets:test_3=~``) is skipped, and testing's ``--sets Set5,Urban100`` keeps only the named datasets, both
  before the option file is validated (a skipped set's folders need not exist);
* ``num_gpu: auto`` -> the number of visible GPUs (0 on a CPU-only machine: train on the CPU);
* ``--launcher pytorch|slurm`` -> torch.distributed initialised (NCCL on GPUs, gloo on CPUs);
  torchrun's ``--local-rank`` and ``--local_rank`` are both accepted;
* seeding every rank with ``manual_seed + rank`` (a random seed is drawn once and shared by all ranks);
* ``deterministic: true`` -> deterministic algorithms (bit-reproducible runs and resumes on CPU);
* the papers' own option files run as they are: official names resolved and ignored keys reported
  (``sr_arch.utils.official_options``), duplicate YAML keys reported with their lines;
* checking the keys the pipeline needs, with errors naming the file and the key
  (``sr_arch.utils.option_validation``), before any folder is created;
* ``num_gpu`` larger than the visible GPUs: an error for training, the CPU (with a note) for testing.
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

from sr_arch.errors import OptionError
from sr_arch.utils import dist as dist_utils
from sr_arch.utils.official_options import reject_foreign_format, resolve_official_names
from sr_arch.utils.option_validation import validate_options
from sr_arch.utils.training_features import TrainingFeatures


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
                             '(~ for none; datasets:test_3=~ skips that dataset)')
    if not is_train:
        parser.add_argument('--sets', metavar='NAMES', help='comma-separated dataset names to test, e.g. '
                            'Set5,Urban100 (default: every dataset of the option file)')
        parser.add_argument('--bicubic', action='store_true',
                            help='also run MATLAB bicubic on the same data: a Bicubic row in paper.md')
        parser.add_argument('--published', metavar='MODEL',
                            help="published numbers to put beside ours in paper.md, e.g. 'HAT-ImageNet' (default: "
                            "the variant the option file tests; 'none' for no published row)")
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    """The option mapping of ``path`` (``OptionError`` if missing, not YAML or not a mapping)."""
    return read_option_file(path)[0]


def read_option_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """(option mapping, one warning per key that appears twice in the same mapping) of ``path``.

    YAML keeps only the last of repeated keys, silently: GRFormer's test files repeat ``test_4``, which
    drops Urban100. Each repetition is named with both line numbers.
    """
    if not osp.isfile(path):
        raise OptionError(f'option file not found: {path}')
    with open(path) as f:
        text = f.read()
    try:
        opt = yaml.safe_load(text)
        duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
    except yaml.YAMLError as err:
        raise OptionError(f'{path}: not valid YAML: {err}') from err
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of options at the top level, found {type(opt).__name__}')
    return opt, duplicates


def duplicate_keys(node: yaml.Node | None, source: str, prefix: str = '') -> list[str]:
    """One line per key repeated in a mapping of the composed YAML ``node`` (recursively)."""
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in first:
                first_key, first_value = first[key]
                name = _name_of(first_value)
                found.append(f'{source}:{key_node.start_mark.line + 1}: {prefix}{key} is given again (first at line '
                             f'{first_key.start_mark.line + 1}); YAML keeps only the last one, the first'
                             f'{f" (name: {name})" if name else ""} is ignored')
            first[key] = (key_node, value_node)
            found += duplicate_keys(value_node, source, f'{prefix}{key}.')
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += duplicate_keys(item, source, f'{prefix}{index}.')
    return found


def _name_of(node: yaml.Node) -> str | None:
    """The scalar ``name`` of a mapping node (a dataset block), else None."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == 'name' and isinstance(value_node, yaml.ScalarNode):
                return str(value_node.value)
    return None


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


def drop_skipped_datasets(opt: dict[str, Any]) -> list[str]:
    """Remove the datasets set to None (e.g. by ``--force_yml datasets:test_3=~``); returns their keys."""
    datasets = opt.get('datasets')
    if not isinstance(datasets, dict):
        return []
    skipped = [key for key, value in datasets.items() if value is None]
    for key in skipped:
        del datasets[key]
    return skipped


def select_datasets(opt: dict[str, Any], names_text: str, source: str) -> None:
    """Keep only the datasets named in ``names_text`` ('Set5,Urban100'; case-insensitive; a name also selects
    LabNet's Gaussian8 widths ``<name>_sig<width>``). An unknown name is an ``OptionError`` listing the known."""
    wanted = [name.strip() for name in names_text.split(',') if name.strip()]
    datasets = opt.get('datasets') or {}
    names = {key: str(block.get('name', key)) for key, block in datasets.items() if isinstance(block, dict)}

    def selected_by(name: str, dataset_name: str) -> bool:
        low, dataset_low = name.lower(), dataset_name.lower()
        return dataset_low == low or dataset_low.startswith(f'{low}_sig')

    unknown = [name for name in wanted if not any(selected_by(name, n) for n in names.values())]
    if not wanted or unknown:
        raise OptionError(f"--sets {names_text!r}: {'no dataset named ' + ', '.join(unknown) if unknown else 'empty'}"
                          f" in {source} (datasets: {', '.join(dict.fromkeys(names.values())) or 'none'})")
    for key in [k for k, n in names.items() if not any(selected_by(name, n) for name in wanted)]:
        del datasets[key]


def require(opt: dict[str, Any], dotted: str, source: str) -> Any:
    node: Any = opt
    for key in dotted.split('.'):
        if not isinstance(node, dict) or node.get(key) is None:
            raise OptionError(f'{source}: missing required option {dotted}')
        node = node[key]
    return node


def resolve_num_gpu(value: Any, source: str, is_train: bool = True, notes: list[str] | None = None) -> int:
    """``auto`` -> visible GPUs; an explicit count must not exceed them (0 = CPU).

    Testing needs no GPU: a count above the visible GPUs tests on what there is (the CPU when none),
    with a line appended to ``notes``; training stops with an ``OptionError``.
    """
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value is None or value == 'auto':
        return available
    try:
        count = int(value)
    except (TypeError, ValueError) as err:
        raise OptionError(f"{source}: num_gpu must be 'auto' or an integer, got {value!r}") from err
    if count < 0:
        raise OptionError(f'{source}: num_gpu must be >= 0, got {count}')
    if count > available and not is_train:
        if notes is not None:
            notes.append(f'{source}: num_gpu: {count} but {available} GPU(s) are visible; testing on '
                         f"{'the CPU' if available == 0 else f'{available} GPU(s)'}")
        return available
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


def check_options(opt: dict[str, Any], source: str, is_train: bool) -> tuple[list[str], list[str]]:
    """Everything about an option mapping that can fail before anything runs; returns (notes, warnings).

    In order: a DAN/IKC-style file is refused (naming our equivalent file), official names are resolved
    (notes), the keys the pipeline needs are required, and the whole mapping is validated (every problem
    at once in one ``OptionValidationError``; keys nothing reads come back as warnings).
    """
    reject_foreign_format(opt, source, is_train)
    notes = resolve_official_names(opt, source, is_train)
    require(opt, 'name', source)
    require(opt, 'network_g.type', source)
    warnings = validate_options(opt, source, is_train=is_train)
    return notes, warnings


def parse_options(root_path: str, is_train: bool = True, argv: list[str] | None = None
                  ) -> tuple[dict[str, Any], argparse.Namespace]:
    """Parse the command line (``argv``, default ``sys.argv[1:]``) and the option file it names."""
    args = build_arg_parser(is_train).parse_args(argv)
    source = args.opt
    opt, duplicates = read_option_file(source)
    opt['opt_path'] = osp.abspath(source)
    for duplicate in duplicates:
        print(f'warning: {duplicate}', flush=True)
    if args.force_yml:
        for key in apply_force_yml(opt, args.force_yml, source):
            print(f'--force_yml created {key} (not in {source})', flush=True)
    drop_skipped_datasets(opt)
    if getattr(args, 'sets', None):
        select_datasets(opt, args.sets, source)

    notes, warnings = check_options(opt, source, is_train)
    opt.setdefault('path', {})
    opt['num_gpu'] = resolve_num_gpu(opt.get('num_gpu', 'auto'), source, is_train, notes)
    for line in [f'warning: {w}' for w in warnings] + [f'note: {n}' for n in notes]:
        print(line, flush=True)

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
        TrainingFeatures.of(opt)  # parsed once, here: fail now, before any folder, on a bad training key
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
