"""Training entry point: ``python train.py -opt FILE`` / ``sr-arch train -opt FILE``.

BasicSR's command line (``--launcher none|pytorch|slurm``, ``--auto_resume``, ``--debug``,
``--force_yml k=v``) and experiment layout (``experiments/<name>/{models,training_states}``,
``tb_logger/<name>``), built from basicsr's pieces (datasets, dataloaders, models, loggers), with:

* one process per GPU under torchrun or srun, or on CPUs with gloo (``sr_arch.utils.options``);
* gradient accumulation, AMP, clipping, compile… (``sr_arch.models.training.TrainingMixin``);
* resumes that continue the same data order and augmentation randomness (``sr_arch.utils.sampling``),
  RNG states, lr schedule and EMA: ``--auto_resume`` takes the newest checkpoint whose training state
  and networks are all present and loadable;
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
from typing import Any, Iterator

import torch

import sr_arch  # noqa: F401  (compat fixes and registration before any basicsr import)
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs
from basicsr.utils import mkdir_and_rename
from basicsr.utils.options import copy_opt_file, dict2str

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


def load_resume_state(opt: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Resolve ``--auto_resume`` / ``path.resume_state``; point ``path.pretrain_network_*`` at the matching
    network files (param key ``params``, strict) so the model is built with the resumed weights."""
    notes: list[str] = []
    labels = network_labels(opt)
    state_path, state = None, None
    if opt['auto_resume']:
        if opt['rank'] == 0:
            notes += [f'removed unfinished save {p}' for p in
                      remove_stale_temporaries(opt['path']['training_states'], opt['path']['models'])]
            state_path, _, skipped = find_resume_state(opt['path']['training_states'], opt['path']['models'], labels)
            notes += [f'auto_resume skipped {reason}' for reason in skipped]
        state_path = dist_utils.broadcast_object(state_path)
    elif opt['path'].get('resume_state'):
        state_path = opt['path']['resume_state']
    if state_path is None:
        return None, notes
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
    notes.append(f'resuming from {state_path} (iteration {state["iter"]})')
    return state, notes


# ---------------------------------------------------------------------------------------------- data


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
    train_set = RobustDataset(train_set, bool(dataset_opt.get('skip_bad_images', False)), 'datasets.train')
    if len(train_set) == 0:
        raise TrainingError(f'{source}: datasets.train ({dataset_opt.get("dataroot_gt")}) holds no images')
    sampler = ResumableSampler(len(train_set), opt['world_size'], opt['rank'], ratio, opt['manual_seed'])
    loader = build_dataloader(SeededDataset(train_set), dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                              sampler=sampler, seed=opt['manual_seed'])
    # a private generator: iterator creation must not draw from the global torch RNG (exact resumes)
    loader.generator = torch.Generator().manual_seed(opt['manual_seed'])
    if len(loader) == 0:
        raise TrainingError(f'{source}: datasets.train has {len(train_set)} images x dataset_enlarge_ratio {ratio} '
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


def setup_logging(opt: dict[str, Any]) -> tuple[logging.Logger, logging.Handler | None]:
    """basicsr's root logger (console), at INFO on rank 0 with this run's log file; ERROR elsewhere."""
    logger = get_root_logger()
    for existing in logger.handlers:  # in-process reruns: follow the current stderr (pytest swaps it)
        if type(existing) is logging.StreamHandler and existing.stream is not sys.stderr:
            existing.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
    handler = None
    if opt['rank'] == 0:
        logger.setLevel(logging.INFO)
        log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
        handler = logging.FileHandler(log_file, 'w')
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        logger.addHandler(handler)
    else:
        logger.setLevel(logging.ERROR)
    return logger, handler


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


def train_pipeline(root_path: str, argv: list[str] | None = None):
    """Run one training from the command line ``argv``; returns the trained model (rank-local)."""
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    opt['root_path'] = root_path
    resume_state, resume_notes = load_resume_state(opt)
    if resume_state is None and opt['rank'] == 0:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name']:
            mkdir_and_rename(osp.join(root_path, 'tb_logger', opt['name']))
    dist_utils.barrier()
    copy_opt_file(args.opt, opt['path']['experiments_root'])

    logger, file_handler = setup_logging(opt)
    try:
        return _train(opt, resume_state, resume_notes, logger)
    except _EXPECTED_ERRORS as err:
        logger.error(f'{type(err).__name__}: {err}')
        err.logged = True
        raise
    finally:
        if file_handler is not None:
            logger.removeHandler(file_handler)
            file_handler.close()


def _train(opt: dict[str, Any], resume_state: dict[str, Any] | None, resume_notes: list[str],
           logger: logging.Logger):
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    for note in resume_notes:
        logger.info(note)
    tb_logger = init_tb_logger(opt)
    features = TrainingFeatures.of(opt)
    train_loader, train_sampler, images_per_step = build_train_loader(opt, logger)
    val_loaders = build_val_loaders(opt, logger)
    model = build_model(opt)

    total_iters = int(opt['train']['total_iter'])
    start_iter, epoch, samples_done = 0, 0, 0
    if resume_state is not None:
        model.resume_training(resume_state)
        start_iter = int(resume_state['iter'])
        loop = resume_state.get('loop') or {}
        epoch = int(loop.get('epoch', resume_state.get('epoch', 0)))
        samples_done = int(loop.get('samples_done', 0))
        rng_states = resume_state.get('rng') or []
        if len(rng_states) == opt['world_size']:
            restore_rng_state(rng_states[opt['rank']])
        elif rng_states:
            logger.warning(f'checkpoint was written by {len(rng_states)} process(es), this run has '
                           f'{opt["world_size"]}: data order continues, model RNG streams restart')
        logger.info(f'Resuming training from epoch {epoch}, iteration {start_iter}')

    accumulate = features.accumulate_grad_batches
    if accumulate > 1 and not hasattr(model, 'train_iteration'):
        raise TrainingError(f'{opt.get("opt_path")}: train.accumulate_grad_batches needs an SRArchModel-based '
                            f'model_type, {type(model).__name__} is not')
    logger_opt = opt['logger']
    print_freq = int(logger_opt['print_freq'])
    save_freq = int(logger_opt['save_checkpoint_freq'])
    val_freq = int(opt['val'].get('val_freq') or 0) if opt.get('val') else 0
    warmup_iter = features.warmup_iter
    msg_logger = MessageLogger(opt, start_iter, tb_logger)
    stream = batch_stream(train_loader, train_sampler, epoch, samples_done, opt)
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    last_saved = start_iter if resume_state is not None else None
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
            images_per_s = images_per_step / max(iter_timer.get_avg_time(), 1e-9)
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
                skips = find_robust_dataset(train_loader.dataset).new_skips_message()
                if skips:
                    logger.warning(skips)
                if tb_logger is not None:
                    tb_logger.add_scalar('lr', lrs[0], current_iter)

            if current_iter % save_freq == 0 or current_iter == total_iters:
                logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
                last_saved = current_iter
            if val_freq and current_iter % val_freq == 0:
                validate(model, opt, val_loaders, current_iter, tb_logger)
            data_timer.start()
            iter_timer.start()

    consumed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info(f'End of training. Time consumed: {consumed}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    if opt.get('val') and not (val_freq and current_iter % val_freq == 0 and current_iter > start_iter):
        validate(model, opt, val_loaders, current_iter, tb_logger)
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
