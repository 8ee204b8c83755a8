"""Training entry point: ``python train.py -opt FILE`` / ``sr-arch train -opt FILE``.

BasicSR's command line (``--launcher none|pytorch|slurm``, ``--auto_resume``, ``--debug``,
``--force_yml k=v``) and experiment layout (``experiments/<name>/{models,training_states}``,
``tb_logger/<name>``), built from basicsr's pieces (datasets, dataloaders, models, loggers), with:

* everything (options, overrides, resume state, datasets, model) built and checked before
  ``experiments/<name>`` is created, archived or continued: a start that fails changes nothing on disk
  and prints its error, not pages of set-up log;
* an existing experiment archived only when a run starts from scratch, never when it is continued;
* one process per GPU under torchrun or srun, or on CPUs with gloo (``sr_arch.utils.options``);
* gradient accumulation, AMP, clipping, compile… (``sr_arch.models.training.TrainingMixin``);
* resumes that continue the same data order and augmentation randomness (``sr_arch.utils.sampling``),
  RNG states, lr schedule and EMA: ``--auto_resume`` takes the newest checkpoint whose training state
  and networks are all present and loadable, and says so (or that there is nothing to resume);
* a tqdm bar on rank 0 (ETA, it/s, images/s), TensorBoard scalars and validation images;
* a clear stop on a non-finite loss (``NonFiniteError``), with no broken checkpoint written.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import os.path as osp
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str
from basicsr.utils.options import dict2str

import sr_arch  # noqa: F401  (compat fixes and registration before any basicsr import)
from sr_arch.data.robust_io import RobustDataset, find_robust_dataset
from sr_arch.errors import CheckpointError, NonFiniteError, OptionError, SRArchError, TrainingError
from sr_arch.models.training import restore_rng_state
from sr_arch.utils import dist as dist_utils
from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint
from sr_arch.utils.options import parse_options
from sr_arch.utils.sampling import ResumableSampler, SeededDataset
from sr_arch.utils.training_features import TrainingFeatures

_STATE_NAME = re.compile(r'^(\d+)\.state$')


# ---------------------------------------------------------------------------------------------- resume


def network_labels(opt: dict[str, Any]) -> list[str]:
    """'g', 'd', … for every ``network_*`` block that is resumed (``path.ignore_resume_networks`` excluded)."""
    ignored = opt['path'].get('ignore_resume_networks') or []
    return [key[len('network_'):] for key in opt if key.startswith('network_') and key not in ignored]


def remove_stale_temporaries(*folders: str) -> list[str]:
    """Delete temporary files left by ``atomic_save`` when a run was killed while saving."""
    removed = []
    for folder in folders:
        if not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith('.') and name.endswith('.tmp'):
                os.remove(osp.join(folder, name))
                removed.append(osp.join(folder, name))
    return removed


def find_resume_state(states_dir: str, models_dir: str, labels: list[str]
                      ) -> tuple[str | None, dict[str, Any] | None, list[str]]:
    """The newest COMPLETE checkpoint: ``{iter}.state`` and every ``net_{label}_{iter}.pth`` present and loadable.

    Returns:
        (state path or None, the loaded state or None, reasons why newer candidates were skipped)
    """
    skipped: list[str] = []
    if not osp.isdir(states_dir):
        return None, None, skipped
    iterations = sorted((int(m.group(1)) for m in map(_STATE_NAME.match, os.listdir(states_dir)) if m), reverse=True)
    for iteration in iterations:
        state_path = osp.join(states_dir, f'{iteration}.state')
        net_paths = [osp.join(models_dir, f'net_{label}_{iteration}.pth') for label in labels]
        try:
            missing = [p for p in net_paths if not osp.isfile(p)]
            if missing:
                raise CheckpointError(f'network file(s) missing: {", ".join(missing)}')
            state = load_checkpoint(state_path)
            if not isinstance(state, dict) or state.get('iter') != iteration:
                raise CheckpointError(f'{state_path}: not a training state of iteration {iteration}')
            for path in net_paths:
                extract_state_dict(load_checkpoint(path), 'params', source=path)
        except CheckpointError as err:
            skipped.append(f'iteration {iteration}: {err}')
            continue
        return state_path, state, skipped
    return None, None, skipped


@dataclass
class ResumePlan:
    """What ``--auto_resume`` / ``path.resume_state`` found, before anything on disk is changed.

    ``state`` is None for a run from iteration 0; ``notes`` are logged at INFO, ``warning`` (e.g.
    "nothing to resume") at WARNING so that it is seen.
    """

    state: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    warning: str | None = None

    @property
    def continuing(self) -> bool:
        return self.state is not None


def load_resume_state(opt: dict[str, Any]) -> ResumePlan:
    """Resolve ``--auto_resume`` / ``path.resume_state`` (read only); point ``path.pretrain_network_*`` at the
    matching network files (param key ``params``, strict) so the model is built with the resumed weights."""
    plan = ResumePlan()
    labels = network_labels(opt)
    state_path = None
    if opt['auto_resume']:
        if opt['rank'] == 0:
            state_path, _, skipped = find_resume_state(opt['path']['training_states'], opt['path']['models'], labels)
            plan.notes += [f'auto_resume skipped {reason}' for reason in skipped]
        state_path = dist_utils.broadcast_object(state_path)
        if state_path is None:
            why = f'{len(plan.notes)} incomplete checkpoint(s), see above' if plan.notes else 'no checkpoint'
            plan.warning = (f'--auto_resume: nothing to resume in {opt["path"]["training_states"]} ({why}); '
                            'starting from iteration 0')
    elif opt['path'].get('resume_state'):
        state_path = opt['path']['resume_state']
    if state_path is None:
        return plan
    state = load_checkpoint(state_path)
    if not isinstance(state, dict) or 'iter' not in state:
        raise CheckpointError(f'{state_path} (path.resume_state): not a training state')
    models_dir = osp.join(osp.dirname(osp.dirname(osp.abspath(state_path))), 'models')
    for label in labels:
        net_path = osp.join(models_dir, f'net_{label}_{state["iter"]}.pth')
        if not osp.isfile(net_path):
            raise CheckpointError(f'{state_path}: its network file {net_path} is missing')
        opt['path'][f'pretrain_network_{label}'] = net_path
        opt['path'][f'param_key_{label}'] = 'params'
        opt['path'][f'strict_load_{label}'] = True
    opt['path']['resume_state'] = state_path
    plan.state = state
    plan.notes.append(f'resuming from {state_path} (iteration {state["iter"]})')
    total = int(opt['train']['total_iter'])
    if int(state['iter']) >= total:
        plan.warning = (f'{state_path} is at iteration {state["iter"]}, train.total_iter is {total}: nothing left '
                        'to train (raise it, e.g. --force_yml train.total_iter=N)')
    return plan


# ---------------------------------------------------------------------------------------------- experiment


def archive_folder(path: str) -> str:
    """Rename ``path`` to ``<path>_archived_<time>`` (basicsr's naming; a counter if taken); returns the new name."""
    target = f'{path}_archived_{get_time_str()}'
    candidate, counter = target, 1
    while osp.exists(candidate):
        candidate, counter = f'{target}_{counter}', counter + 1
    os.rename(path, candidate)
    return candidate


def copy_option_file(opt_file: str, experiments_root: str) -> str:
    """Copy the option file into the experiment, headed by the time and command line.

    The copy of an earlier start of the same experiment (a resumed run) is kept: the new copy then
    gets the time in its name.
    """
    stem, ext = osp.splitext(osp.basename(opt_file))
    target = osp.join(experiments_root, stem + ext)
    if osp.exists(target):
        target = osp.join(experiments_root, f'{stem}_{get_time_str()}{ext}')
    with open(opt_file) as f:
        text = f.read()
    header = f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {" ".join(sys.argv)}\n\n'
    with open(target, 'w') as f:
        f.write(header + text)
    return target


def open_experiment(opt: dict[str, Any], opt_file: str, continuing: bool) -> list[str]:
    """Create ``experiments/<name>`` and its sub-folders on rank 0; called once everything is validated.

    An existing experiment folder (and its ``tb_logger/<name>``) is archived only when this run starts
    from scratch; a continued run (``--auto_resume`` / ``path.resume_state``) writes into it, after
    deleting temporary files of a save that was killed. Returns what was done, for the log.
    """
    notes: list[str] = []
    paths = opt['path']
    if opt['rank'] == 0:
        root = paths['experiments_root']
        tb_dir = osp.join(opt['root_path'], 'tb_logger', opt['name'])
        if not continuing:
            for folder in (root, tb_dir):
                if osp.exists(folder):
                    notes.append(f'{folder} already existed: archived to {archive_folder(folder)} (this run starts '
                                 'from iteration 0; --auto_resume would have continued it)')
        for key in ('experiments_root', 'models', 'training_states', 'visualization', 'log'):
            os.makedirs(paths[key], exist_ok=True)
        if continuing and opt['auto_resume']:
            notes += [f'removed unfinished save {p}' for p in
                      remove_stale_temporaries(paths['training_states'], paths['models'])]
        copy_option_file(opt_file, root)
    dist_utils.barrier()
    return notes


# ---------------------------------------------------------------------------------------------- data


#: pairs whose sizes ``check_pair_scales`` reads from a folder dataset (header reads, evenly spread)
PAIR_SCALE_SAMPLES = 16
_META_SHAPE = re.compile(r'^(\S+)\s+\((\d+),\s*(\d+)')


def _lmdb_shapes(folder: str) -> dict[str, tuple[int, int]]:
    """key -> (H, W) from an LMDB's ``meta_info.txt`` (``0001_s001.png (480,480,3) 1``)."""
    shapes = {}
    with open(osp.join(folder, 'meta_info.txt')) as f:
        for line in f:
            match = _META_SHAPE.match(line.strip())
            if match:
                shapes[match.group(1).split('.')[0]] = (int(match.group(2)), int(match.group(3)))
    return shapes


def _file_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image file from its header, or None when it cannot be read (reported when loaded)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError):
        return None


def check_pair_scales(dataset: Any, phase: str, source: str) -> None:
    """A paired dataset whose LR is not 1/scale of its GT fails now, naming both files and the option keys.

    basicsr would stop at the first batch with ``Scale mismatches`` (train) or later in the metrics
    (validation). LMDBs are checked pair by pair from their ``meta_info.txt``; folders on
    ``PAIR_SCALE_SAMPLES`` pairs spread over the dataset (an LR folder of another scale fails on all).
    """
    paths = getattr(dataset, 'paths', None)
    opt = getattr(dataset, 'opt', {})
    scale = opt.get('scale')
    if not paths or not isinstance(paths[0], dict) or not {'gt_path', 'lq_path'} <= set(paths[0]) or not scale:
        return
    backend = (opt.get('io_backend') or {}).get('type', 'disk')
    if backend == 'lmdb':
        try:
            gt_shapes, lq_shapes = _lmdb_shapes(opt['dataroot_gt']), _lmdb_shapes(opt['dataroot_lq'])
        except OSError:
            return
        pairs = [(p['gt_path'], p['lq_path'], gt_shapes.get(p['gt_path']), lq_shapes.get(p['lq_path'])) for p in paths]
        where = (f'{opt["dataroot_gt"]} key ', f'{opt["dataroot_lq"]} key ')
    elif backend == 'disk':
        step = max(1, len(paths) // PAIR_SCALE_SAMPLES)
        pairs = [(p['gt_path'], p['lq_path'], _file_size(p['gt_path']), _file_size(p['lq_path']))
                 for p in paths[::step]]
        where = ('', '')
    else:
        return
    for gt_path, lq_path, gt_size, lq_size in pairs:
        if gt_size is None or lq_size is None:
            continue
        fits = [(gt == lq * scale) if phase == 'train' else (lq * scale <= gt < (lq + 1) * scale)
                for gt, lq in zip(gt_size, lq_size)]
        if all(fits):
            continue
        ratio = gt_size[0] / lq_size[0]
        found = f'x{ratio:.0f}' if abs(ratio - round(ratio)) < 0.05 * ratio else f'x{ratio:.2f}'
        raise OptionError(f'{source}: datasets.{phase}: LR {where[1]}{lq_path} ({lq_size[0]}x{lq_size[1]}) is not '
                          f'1/{scale} of its GT {where[0]}{gt_path} ({gt_size[0]}x{gt_size[1]}, about {found}); '
                          f'check datasets.{phase}.dataroot_lq / dataroot_gt against scale: {scale}')


def build_dataset_checked(dataset_opt: dict[str, Any], phase: str, source: str) -> torch.utils.data.Dataset:
    """basicsr's ``build_dataset``; a missing folder / file or bad key names the option block."""
    try:
        return build_dataset(dataset_opt)
    except (OSError, KeyError, ValueError, AssertionError) as err:
        roots = {k: v for k, v in dataset_opt.items() if k.startswith(('dataroot', 'meta_info'))}
        raise OptionError(f'{source}: datasets.{phase} (type {dataset_opt.get("type")}, {roots}) cannot be built: '
                          f'{type(err).__name__}: {err}') from err


def build_train_loader(opt: dict[str, Any], logger: logging.Logger
                       ) -> tuple[torch.utils.data.DataLoader, ResumableSampler, int]:
    """Train dataloader over ``SeededDataset`` with a ``ResumableSampler``; returns (loader, sampler, images/step)."""
    dataset_opt = opt['datasets']['train']
    source = opt.get('opt_path', '<options>')
    for key in ('batch_size_per_gpu', 'num_worker_per_gpu'):
        if key not in dataset_opt:
            raise OptionError(f'{source}: missing required option datasets.train.{key}')
    ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
    train_set = build_dataset_checked(dataset_opt, 'train', source)
    check_pair_scales(train_set, 'train', source)
    train_set = RobustDataset(train_set, bool(dataset_opt.get('skip_bad_images', False)), 'datasets.train')
    if len(train_set) == 0:
        raise TrainingError(f'{source}: datasets.train ({dataset_opt.get("dataroot_gt")}) holds no images')
    sampler = ResumableSampler(len(train_set), opt['world_size'], opt['rank'], ratio, opt['manual_seed'])
    loader = build_dataloader(SeededDataset(train_set), dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                              sampler=sampler, seed=opt['manual_seed'])
    # a private generator: iterator creation must not draw from the global torch RNG (exact resumes)
    loader.generator = torch.Generator().manual_seed(opt['manual_seed'])
    if len(loader) == 0:
        images = f'{len(train_set)} image' + ('s' if len(train_set) != 1 else '')
        raise TrainingError(f'{source}: datasets.train has {images} x dataset_enlarge_ratio {ratio} '
                            f'over {opt["world_size"]} process(es) = {len(sampler)} per process, fewer than one batch '
                            f'(batch_size_per_gpu: {dataset_opt["batch_size_per_gpu"]}, last partial batch dropped)')
    features = TrainingFeatures.of(opt)
    images_per_step = loader.batch_size * opt['world_size'] * features.accumulate_grad_batches
    iters_per_epoch = len(loader) / features.accumulate_grad_batches
    logger.info('Training statistics:'
                f'\n\tNumber of train images: {len(train_set)}'
                f'\n\tDataset enlarge ratio: {ratio}'
                f'\n\tBatch size per process: {loader.batch_size} x accumulate {features.accumulate_grad_batches}'
                f'\n\tWorld size: {opt["world_size"]}; images per optimizer step: {images_per_step}'
                f'\n\tIterations per epoch: {iters_per_epoch:g}; total iterations: {int(opt["train"]["total_iter"])}')
    return loader, sampler, images_per_step


def build_val_loaders(opt: dict[str, Any], logger: logging.Logger) -> list[torch.utils.data.DataLoader]:
    loaders = []
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            continue
        if phase.split('_')[0] != 'val':
            raise OptionError(f"{opt.get('opt_path', '<options>')}: datasets.{phase}: phase must be 'train' or "
                              "'val[_name]'")
        val_set = build_dataset_checked(dataset_opt, phase, opt.get('opt_path', '<options>'))
        check_pair_scales(val_set, phase, opt.get('opt_path', '<options>'))
        loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                        sampler=None, seed=opt['manual_seed']))
        logger.info(f'Number of val images in {dataset_opt["name"]}: {len(val_set)}')
    return loaders


def batch_stream(loader: torch.utils.data.DataLoader, sampler: ResumableSampler, epoch: int, samples_done: int,
                 opt: dict[str, Any]) -> Iterator[tuple[int, int, Any]]:
    """Endless (epoch, samples all ranks drew in that epoch so far, batch), starting ``samples_done`` samples
    (all ranks together) into ``epoch``."""
    prefetch_mode = opt['datasets']['train'].get('prefetch_mode')
    if prefetch_mode not in (None, 'cpu', 'cuda'):
        raise OptionError(f"{opt.get('opt_path', '<options>')}: datasets.train.prefetch_mode must be ~, cpu or "
                          f'cuda, got {prefetch_mode!r}')
    prefetcher = None
    while True:
        sampler.set_epoch(epoch, skip=samples_done // sampler.num_replicas)
        if prefetch_mode == 'cuda':
            from basicsr.data.prefetch_dataloader import CUDAPrefetcher

            if prefetcher is None:
                prefetcher = CUDAPrefetcher(loader, opt)
            else:
                prefetcher.reset()
            batches = iter(prefetcher.next, None)
        else:
            batches = iter(loader)
        for data in batches:
            samples_done += loader.batch_size * sampler.num_replicas
            yield epoch, samples_done, data
        epoch, samples_done = epoch + 1, 0


# ---------------------------------------------------------------------------------------------- logging


class HeldRecords(logging.Handler):
    """Keeps log records while a run is being set up: nothing is written before the experiment folder exists,
    and a start that fails prints its error, not pages of set-up output."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class RunLogging:
    """basicsr's root logger during one run: its console handlers, held records, then the log file."""

    logger: logging.Logger
    consoles: list[logging.Handler]
    held: HeldRecords | None
    file_handler: logging.Handler | None = None

    @classmethod
    def start(cls, opt: dict[str, Any]) -> 'RunLogging':
        """Console handlers detached and records held (see ``HeldRecords``); INFO on rank 0, ERROR elsewhere."""
        logger = get_root_logger()
        consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        for handler in consoles:
            if handler.stream is not sys.stderr:  # in-process reruns: follow the current stderr (pytest swaps it)
                handler.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
            logger.removeHandler(handler)
        held = HeldRecords()
        logger.addHandler(held)
        logger.setLevel(logging.INFO if opt['rank'] == 0 else logging.ERROR)
        return cls(logger, consoles, held)

    def release(self, log_file: str | None, min_level: int = logging.DEBUG) -> None:
        """Re-attach the consoles (and the log file on rank 0); replay held records of ``min_level`` and above."""
        if self.held is None:
            return
        self.logger.removeHandler(self.held)
        if log_file is not None:
            self.file_handler = logging.FileHandler(log_file, 'w')
            self.file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        targets = self.consoles + ([self.file_handler] if self.file_handler is not None else [])
        for handler in targets:
            self.logger.addHandler(handler)
        for record in self.held.records:
            if record.levelno >= min_level:
                for handler in targets:
                    if record.levelno >= handler.level:
                        handler.handle(record)
        self.held = None

    def close(self) -> None:
        """Show warnings held by a start that failed; detach the log file."""
        self.release(None, logging.WARNING)
        if self.file_handler is not None:
            self.logger.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None


class ProgressMessageLogger(MessageLogger):
    """basicsr's iteration line, with an ETA that cannot go negative (``eta: -1 day, 23:59:59`` at the end)."""

    def __call__(self, log_vars: dict[str, Any]) -> None:
        if dist_utils.get_rank() != 0:
            return
        epoch, current_iter, lrs = log_vars.pop('epoch'), log_vars.pop('iter'), log_vars.pop('lrs')
        message = f'[{self.exp_name[:5]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:('
        message += ''.join(f'{lr:.3e},' for lr in lrs) + ')] '
        if 'time' in log_vars:
            iter_time, data_time = log_vars.pop('time'), log_vars.pop('data_time')
            done = max(current_iter - self.start_iter - 1, 1)  # the clock restarts after the first iteration
            remaining = max(int(self.max_iters) - current_iter, 0)
            eta = datetime.timedelta(seconds=int((time.time() - self.start_time) / done * remaining))
            message += f'[eta: {eta}, time (data): {iter_time:.3f} ({data_time:.3f})] '
        for key, value in log_vars.items():
            message += f'{key}: {value:.4e} '
            if self.use_tb_logger and 'debug' not in self.exp_name and self.tb_logger is not None:
                self.tb_logger.add_scalar(f'losses/{key}' if key.startswith('l_') else key, value, current_iter)
        self.logger.info(message)


def init_tb_logger(opt: dict[str, Any]):
    if not opt['logger'].get('use_tb_logger') or 'debug' in opt['name'] or opt['rank'] != 0:
        return None
    from basicsr.train import init_tb_loggers

    return init_tb_loggers(opt)


def log_validation_images(model, loader, tb_logger, current_iter: int, count: int) -> None:
    """The first ``count`` SR outputs of a validation set as TensorBoard images ``val/<dataset>/<image>``."""
    name = loader.dataset.opt.get('name', 'val')
    bare_network = getattr(model, 'bare_network_for_inference', contextlib.nullcontext)
    for index, data in enumerate(loader):
        if index >= count:
            break
        model.feed_data(data)
        with bare_network():  # rank 0 alone: no DDP forward (its buffer broadcast would wait for the others)
            model.test()
        result = model.get_current_visuals()['result'][0].float().clamp(0, 1)
        image_name = osp.splitext(osp.basename(data['lq_path'][0]))[0] if 'lq_path' in data else str(index)
        tb_logger.add_image(f'val/{name}/{image_name}', result, current_iter)
        for attr in ('lq', 'gt', 'output'):
            if hasattr(model, attr):
                delattr(model, attr)


def validate(model, opt: dict[str, Any], val_loaders: list, current_iter: int, tb_logger) -> None:
    val_opt = opt['val']
    for loader in val_loaders:
        model.validation(loader, current_iter, tb_logger, val_opt.get('save_img', False))
        if tb_logger is not None and val_opt.get('tb_images', 2):
            log_validation_images(model, loader, tb_logger, current_iter, int(val_opt.get('tb_images', 2)))


def make_progress_bar(opt: dict[str, Any], start: int, total: int):
    from tqdm import tqdm

    setting = opt['logger'].get('progress_bar', 'auto')
    enabled = sys.stderr.isatty() if setting == 'auto' else bool(setting)
    return tqdm(total=total, initial=start, unit='it', dynamic_ncols=True, disable=not enabled or opt['rank'] != 0,
                mininterval=0.5 if sys.stderr.isatty() else 30, desc=opt['name'][:20])


# ---------------------------------------------------------------------------------------------- pipeline


@dataclass
class Run:
    """Everything a training needs, built and checked before any folder is created."""

    features: TrainingFeatures
    train_loader: torch.utils.data.DataLoader
    train_sampler: ResumableSampler
    images_per_step: int
    val_loaders: list
    model: Any
    start_iter: int = 0
    epoch: int = 0
    samples_done: int = 0
    rng_state: dict[str, Any] | None = None


def train_pipeline(root_path: str, argv: list[str] | None = None):
    """Run one training from the command line ``argv``; returns the trained model (rank-local).

    Options, resume state, datasets and model are all built and checked first; only then is
    ``experiments/<name>`` created (or an existing one archived, or continued), so a start that fails
    changes nothing on disk.
    """
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    opt['root_path'] = root_path
    run_logging = RunLogging.start(opt)
    logger = run_logging.logger
    try:
        plan = load_resume_state(opt)
        run = build_run(opt, plan, logger)
        for note in open_experiment(opt, args.opt, plan.continuing):
            logger.warning(note)
        log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
        run_logging.release(log_file if opt['rank'] == 0 else None)
        return _train(opt, run, logger)
    except _EXPECTED_ERRORS as err:
        run_logging.release(None, logging.WARNING)  # a failed start: its warnings, then the error; no file
        logger.error(f'{type(err).__name__}: {err}')
        err.logged = True
        raise
    finally:
        run_logging.close()


def build_run(opt: dict[str, Any], plan: ResumePlan, logger: logging.Logger) -> Run:
    """Datasets, dataloaders and model (with the resumed weights and training state); raises on bad input."""
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    for note in plan.notes:
        logger.info(note)
    if plan.warning:
        logger.warning(plan.warning)
    features = TrainingFeatures.of(opt)
    train_loader, train_sampler, images_per_step = build_train_loader(opt, logger)
    val_loaders = build_val_loaders(opt, logger)
    try:
        model = build_model(opt)
    except ValueError as err:  # e.g. an optimizer argument torch refuses; the message names the option
        raise TrainingError(f'the model cannot be built: {err}') from err
    if features.accumulate_grad_batches > 1 and not hasattr(model, 'train_iteration'):
        raise TrainingError(f'{opt.get("opt_path")}: train.accumulate_grad_batches needs an SRArchModel-based '
                            f'model_type, {type(model).__name__} is not')
    run = Run(features, train_loader, train_sampler, images_per_step, val_loaders, model)
    resume_state = plan.state
    if resume_state is not None:
        model.resume_training(resume_state)
        run.start_iter = int(resume_state['iter'])
        loop = resume_state.get('loop') or {}
        run.epoch = int(loop.get('epoch', resume_state.get('epoch', 0)))
        run.samples_done = int(loop.get('samples_done', 0))
        rng_states = resume_state.get('rng') or []
        if len(rng_states) == opt['world_size']:
            run.rng_state = rng_states[opt['rank']]
        elif rng_states:
            logger.warning(f'checkpoint was written by {len(rng_states)} process(es), this run has '
                           f'{opt["world_size"]}: data order continues, model RNG streams restart')
        logger.info(f'Resuming training from epoch {run.epoch}, iteration {run.start_iter}')
    return run


def _train(opt: dict[str, Any], run: Run, logger: logging.Logger):
    model, features = run.model, run.features
    tb_logger = init_tb_logger(opt)
    if run.rng_state is not None:
        restore_rng_state(run.rng_state)
    total_iters = int(opt['train']['total_iter'])
    start_iter, epoch, samples_done = run.start_iter, run.epoch, run.samples_done
    accumulate = features.accumulate_grad_batches
    logger_opt = opt['logger']
    print_freq = int(logger_opt['print_freq'])
    save_freq = int(logger_opt['save_checkpoint_freq'])
    val_freq = int(opt['val'].get('val_freq') or 0) if opt.get('val') else 0
    warmup_iter = features.warmup_iter
    msg_logger = ProgressMessageLogger(opt, start_iter, tb_logger)
    stream = batch_stream(run.train_loader, run.train_sampler, epoch, samples_done, opt)
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    last_saved = start_iter if start_iter > 0 else None
    model.loop_state = {'epoch': epoch, 'samples_done': samples_done}
    logger.info(f'Start training from epoch {epoch}, iteration {start_iter}')

    from tqdm.contrib.logging import logging_redirect_tqdm

    current_iter = start_iter
    with make_progress_bar(opt, start_iter, total_iters) as pbar, logging_redirect_tqdm(loggers=[logger]):
        while current_iter < total_iters:
            batches = []
            for _ in range(accumulate):
                epoch, samples_done, data = next(stream)
                batches.append(data)
            data_timer.record()
            current_iter += 1
            model.update_learning_rate(current_iter, warmup_iter=warmup_iter)
            try:
                if hasattr(model, 'train_iteration'):
                    model.train_iteration(batches, current_iter)
                else:
                    model.feed_data(batches[0])
                    model.optimize_parameters(current_iter)
            except NonFiniteError as err:
                saved = f'last checkpoint: iteration {last_saved}' if last_saved else 'no checkpoint was written'
                raise NonFiniteError(f'{err} ({saved})') from None
            model.loop_state = {'epoch': epoch, 'samples_done': samples_done}
            iter_timer.record()
            if current_iter == start_iter + 1:
                msg_logger.reset_start_time()

            log = model.get_current_log()
            images_per_s = run.images_per_step / max(iter_timer.get_avg_time(), 1e-9)
            pbar.set_postfix_str(f'{images_per_s:.1f} img/s ' + ' '.join(f'{k}={v:.4g}' for k, v in log.items()),
                                 refresh=False)
            pbar.update(1)
            if current_iter % print_freq == 0:
                lrs = model.get_current_learning_rate()
                log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': lrs, 'time': iter_timer.get_avg_time(),
                            'data_time': data_timer.get_avg_time()}
                log_vars.update(log)
                log_vars['images_per_s'] = images_per_s
                msg_logger(log_vars)
                skips = find_robust_dataset(run.train_loader.dataset).new_skips_message()
                if skips:
                    logger.warning(skips)
                if tb_logger is not None:
                    tb_logger.add_scalar('lr', lrs[0], current_iter)

            if current_iter % save_freq == 0 or current_iter == total_iters:
                logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
                last_saved = current_iter
            if val_freq and current_iter % val_freq == 0:
                validate(model, opt, run.val_loaders, current_iter, tb_logger)
            data_timer.start()
            iter_timer.start()

    consumed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info(f'End of training. Time consumed: {consumed}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    if opt.get('val') and not (val_freq and current_iter % val_freq == 0 and current_iter > start_iter):
        validate(model, opt, run.val_loaders, current_iter, tb_logger)
    if tb_logger is not None:
        tb_logger.close()
    return model


#: errors whose message is the whole story: logged and printed as one line, no traceback
_EXPECTED_ERRORS = SRArchError


def main(argv: list[str] | None = None) -> int:
    """``train.py`` / ``sr-arch train``: 0 on success, 1 with a one-paragraph error on a known failure."""
    try:
        train_pipeline(os.getcwd(), argv)
    except _EXPECTED_ERRORS as err:
        if not getattr(err, 'logged', False):
            prefix = f'[rank {dist_utils.get_rank()}] ' if dist_utils.is_distributed() else ''
            print(f'{prefix}train: error: {err}', file=sys.stderr, flush=True)
        return 1
    finally:
        dist_utils.cleanup_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
