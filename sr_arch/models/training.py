"""Training side of ``SRArchModel``: opt-in training features on top of basicsr's ``SRModel``.

Option keys (all under ``train:``, all off by default; docs/training.md has the full table):

* ``amp: {enabled: false, dtype: bf16}``: autocast the network forward (``bf16`` or ``fp16``;
  fp16 uses a ``GradScaler`` whose state is checkpointed). Losses are computed in fp32.
* ``channels_last: false``: network weights and LR batches in channels-last memory format.
* ``grad_clip: {max_norm: 0.0, norm_type: 2}``: clip the global gradient norm (logged as ``grad_norm``).
* ``accumulate_grad_batches: 1``: one optimizer step per ``k`` loader batches (effective batch
  ``batch_size_per_gpu x world_size x k``); iteration counts, schedules and checkpoints count steps.
* ``compile: {enabled: false, mode: ~, backend: inductor}``: ``torch.compile`` the training forward
  (validation and saving use the plain module).
* ``warmup_iter``: linear warm-up that multiplies the scheduled lr (basicsr's version froze MultiStepLR
  at ``(w-1)/w`` of the lr after warm-up).
* ``ema_decay``, ``optim_g`` (any ``torch.optim`` class), ``scheduler`` (basicsr's) as in basicsr.

Also: DDP on CPU (gloo) as well as GPU, validation sharded over ranks and gathered, pretrained weights
loaded through ``sr_arch.utils.checkpoint`` with a report of what a non-strict load skipped, atomic
checkpoints that carry the RNG states and data position for exact resumes, and a stop with a clear
message on a non-finite loss or weights (nothing non-finite is ever saved).
"""
from __future__ import annotations

import inspect
import os
import random
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from sr_arch.archs import find_family_spec
from sr_arch.archs.spec import NETWORK_KWARGS_KEY
from sr_arch.errors import CheckpointError, NonFiniteError, OptionError
from sr_arch.utils import dist as dist_utils
from sr_arch.utils.checkpoint import atomic_save, extract_state_dict, load_checkpoint, strip_prefix
from sr_arch.utils.training_features import TrainingFeatures

#: version tag of the training-state files written here (basicsr's keys plus ours)
STATE_FORMAT = 'sr_arch-training-state-1'


def _logger():
    from basicsr.utils import get_root_logger

    return get_root_logger()


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What a checkpoint load matched and skipped."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def lines(self) -> list[str]:
        out = [f'  missing in checkpoint (kept at initialisation): {name}' for name in self.missing]
        out += [f'  unexpected in checkpoint (ignored): {name}' for name in self.unexpected]
        out += [f'  shape mismatch (kept at initialisation): {name}: checkpoint {list(ckpt)} vs network {list(net)}'
                for name, ckpt, net in self.shape_mismatch]
        return out

    def __str__(self) -> str:
        head = (f'{self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.missing)} missing, '
                f'{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} with another shape')
        return '\n'.join([head] + self.lines())


def match_state_dict(network_state: Mapping[str, Tensor], checkpoint_state: Mapping[str, Tensor], source: str
                     ) -> tuple['OrderedDict[str, Tensor]', LoadReport]:
    """The checkpoint tensors that fit the network (same name and shape), and a report of the rest."""
    report = LoadReport(source)
    usable: OrderedDict[str, Tensor] = OrderedDict()
    for name, tensor in checkpoint_state.items():
        if name not in network_state:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(network_state[name].shape):
            report.shape_mismatch.append((name, tuple(tensor.shape), tuple(network_state[name].shape)))
        else:
            usable[name] = tensor
            report.loaded.append(name)
    report.missing = [name for name in network_state if name not in checkpoint_state]
    return usable, report


# ---------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# ---------------------------------------------------------------------------------------------- validation


class DatasetShard(torch.utils.data.Dataset):
    """Every ``world_size``-th item of a validation dataset, starting at ``rank``; keeps ``.opt``."""

    def __init__(self, dataset: torch.utils.data.Dataset, rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world_size))
        self.opt = getattr(dataset, 'opt', {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Any:
        return self.dataset[self.indices[item]]


# ---------------------------------------------------------------------------------------------- the mixin


class TrainingMixin:
    """Mixed into basicsr's ``SRModel``; overrides its device placement, loading, optimisation and saving.

    The pipeline (``sr_arch.train``) calls ``train_iteration(batches, current_iter)`` with
    ``accumulate_grad_batches`` loader batches; basicsr's ``feed_data`` + ``optimize_parameters`` still
    work for one batch. ``loop_state`` (epoch, samples all ranks drew in it) is set by the pipeline and
    stored in every training state.
    """

    loop_state: dict[str, Any] = {}

    @property
    def features(self) -> TrainingFeatures:
        return TrainingFeatures.of(self.opt)

    # ------------------------------------------------------------------ devices and wrappers

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """Move to ``self.device`` (channels-last if asked) and, for training, wrap in DDP (GPU or CPU) /
        DataParallel. Testing under a launcher needs no wrapper: every rank runs its own images."""
        net = net.to(self.device)
        if self.features.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.opt['dist'] and self.opt.get('is_train', True):
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(net, device_ids=device_ids,
                                          find_unused_parameters=self.opt.get('find_unused_parameters', False))
        elif not self.opt['dist'] and self.opt['num_gpu'] > 1:
            _logger().warning('num_gpu > 1 without a launcher uses DataParallel; torchrun --launcher pytorch '
                              '(DistributedDataParallel) is faster')
            net = DataParallel(net)
        return net

    def get_bare_model(self, net: nn.Module) -> nn.Module:
        """The module under DDP / DataParallel / torch.compile wrappers."""
        while True:
            if isinstance(net, (DataParallel, DistributedDataParallel)):
                net = net.module
            elif hasattr(net, '_orig_mod') and isinstance(net._orig_mod, nn.Module):
                net = net._orig_mod
            else:
                return net

    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        """Any ``torch.optim`` optimizer by class name (basicsr 1.4.2 only knows Adam)."""
        optimizer_class = getattr(torch.optim, optim_type, None)
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise OptionError(f"{self.opt.get('opt_path', '<options>')}: train.optim_g.type {optim_type!r} is not a "
                             'torch.optim optimizer (e.g. Adam, AdamW, SGD)')
        if self.device.type == 'cpu' and not {'fused', 'foreach'} & set(kwargs):
            # torch picks its faster implementations by itself only for CUDA parameters. On CPU the fused kernels
            # (Adam, AdamW, SGD, Adagrad) take an ESRT Adam step from 18 to 6 ms, the multi-tensor (foreach) ones
            # save the others a Python loop per parameter. An explicit ``fused`` or ``foreach`` stands.
            accepted = inspect.signature(optimizer_class).parameters
            if 'fused' in accepted:
                kwargs['fused'] = True
            elif 'foreach' in accepted:
                kwargs['foreach'] = True
        try:
            return optimizer_class(params, lr, **kwargs)
        except TypeError as err:
            raise OptionError(f"{self.opt.get('opt_path', '<options>')}: train.optim_g {optim_type} with "
                             f'{kwargs}: {err}') from err

    def setup_schedulers(self) -> None:
        """basicsr's schedulers (MultiStepLR / MultiStepRestartLR / CosineAnnealingRestartLR), clear errors."""
        scheduler_opt = dict(self.opt['train'].get('scheduler') or {})
        try:
            super().setup_schedulers()
        except (TypeError, NotImplementedError, KeyError) as err:
            raise OptionError(f"{self.opt.get('opt_path', '<options>')}: train.scheduler {scheduler_opt}: {err} "
                             '(types: MultiStepLR, MultiStepRestartLR, CosineAnnealingRestartLR)') from err

    # ------------------------------------------------------------------ loading pretrained weights

    def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: str | None = 'params'
                     ) -> LoadReport:
        """Load weights (``weights_only``) into ``net``; non-strict loads skip and log mismatching tensors.

        Raises:
            CheckpointError: unreadable file, or a strict load whose names/shapes differ (listed).
        """
        bare = self.get_bare_model(net)
        state = extract_state_dict(load_checkpoint(load_path), param_key, source=load_path)
        usable, report = match_state_dict(bare.state_dict(), state, load_path)
        if strict and not report.complete:
            raise CheckpointError(f'strict load of {load_path} into {bare.__class__.__name__} failed; set '
                                  'path.strict_load_g (strict_load_d…) to false to skip these:\n'
                                  + '\n'.join(report.lines()))
        bare.load_state_dict(usable, strict=False)
        logger = _logger()
        logger.info(f'Loaded {bare.__class__.__name__} from {load_path} (param key {param_key}): '
                    f'{len(report.loaded)} tensors')
        if not report.complete:
            logger.warning(f'Non-strict load of {report}')
        return report

    # ------------------------------------------------------------------ set-up

    @property
    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 AMP's loss scaler (a disabled pass-through otherwise); created on first use."""
        if '_grad_scaler' not in self.__dict__:
            features = self.features
            fp16 = features.amp and features.amp_dtype == torch.float16
            self._grad_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        return self._grad_scaler

    def init_training_settings(self) -> None:
        super().init_training_settings()
        features = self.features
        self.train_forward = self.net_g
        if features.compile:
            kwargs = {'backend': features.compile_backend}
            if features.compile_backend == 'inductor' and features.compile_mode:
                kwargs['mode'] = features.compile_mode
            self.train_forward = torch.compile(self.net_g, **kwargs)
        logger = _logger()
        logger.info(f'Training features: {features}')

    def feed_data(self, data: Mapping[str, Any]) -> None:
        super().feed_data(data)
        if self.features.channels_last and getattr(self, 'lq', None) is not None and self.lq.dim() == 4:
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)

    def autocast(self):
        features = self.features
        if not features.amp:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=features.amp_dtype)

    # ------------------------------------------------------------------ one optimisation step

    def compute_losses(self) -> tuple[Tensor, 'OrderedDict[str, Tensor]']:
        """Forward the fed batch and return (total loss, {term: loss}); losses in fp32."""
        with self.autocast():
            self.output = getattr(self, 'train_forward', self.net_g)(self.lq)
        output = self.output.float()
        total: Tensor | float = 0.0
        terms: OrderedDict[str, Tensor] = OrderedDict()
        if self.cri_pix:
            terms['l_pix'] = self.cri_pix(output, self.gt)
        if self.cri_perceptual:
            with self.autocast():
                l_percep, l_style = self.cri_perceptual(output, self.gt)
            if l_percep is not None:
                terms['l_percep'] = l_percep.float()
            if l_style is not None:
                terms['l_style'] = l_style.float()
        for value in terms.values():
            total = total + value
        return total, terms

    def _reduced_finite_terms(self, terms: Mapping[str, Tensor], current_iter: int) -> dict[str, float]:
        """Average the loss terms over ranks; raise ``NonFiniteError`` (on every rank) if any is NaN/inf."""
        if not terms:
            return {}
        values = torch.stack([value.detach().float().mean() for value in terms.values()])
        if self.opt['dist']:
            torch.distributed.all_reduce(values)
            values = values / self.opt['world_size']
        values = values.cpu()
        if not torch.isfinite(values).all():
            bad = ', '.join(f'{name}={value.item()}' for name, value in zip(terms, values)
                            if not torch.isfinite(value))
            raise NonFiniteError(f'iteration {current_iter}: non-finite loss {bad}; stopped before the optimizer '
                                 'step, nothing of this iteration was saved (lower train.optim_g.lr, enable '
                                 'train.grad_clip, or use amp dtype bf16 instead of fp16)')
        return {name: value.item() for name, value in zip(terms, values)}

    def _backward_fed_batch(self, current_iter: int, loss_scale: float, sync: bool) -> dict[str, float]:
        net = self.net_g
        context = net.no_sync() if (not sync and isinstance(net, DistributedDataParallel)) else nullcontext()
        with context:
            total, terms = self.compute_losses()
            logged = self._reduced_finite_terms(terms, current_iter)
            self.grad_scaler.scale(total * loss_scale).backward()
        return logged

    def _optimizer_step(self, current_iter: int, log: dict[str, float]) -> None:
        features = self.features
        if features.grad_clip_norm:
            self.grad_scaler.unscale_(self.optimizer_g)
            params = [p for group in self.optimizer_g.param_groups for p in group['params']]
            norm = torch.nn.utils.clip_grad_norm_(params, features.grad_clip_norm, features.grad_clip_norm_type)
            log['grad_norm'] = float(norm)
            if not torch.isfinite(norm) and not self.grad_scaler.is_enabled():
                raise NonFiniteError(f'iteration {current_iter}: non-finite gradient norm {float(norm)}; stopped '
                                     'before the optimizer step, nothing of this iteration was saved')
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        if self.grad_scaler.is_enabled():
            log['amp_scale'] = float(self.grad_scaler.get_scale())
        self.optimizer_g.zero_grad(set_to_none=True)
        self.log_dict = OrderedDict(log)
        if getattr(self, 'ema_decay', 0) > 0:
            self.model_ema(decay=self.ema_decay)

    def optimize_parameters(self, current_iter: int) -> None:
        """One optimizer step on the batch given to ``feed_data`` (basicsr's API)."""
        self.optimizer_g.zero_grad(set_to_none=True)
        log = self._backward_fed_batch(current_iter, 1.0, sync=True)
        self._optimizer_step(current_iter, log)

    def train_iteration(self, batches: list[Mapping[str, Any]], current_iter: int) -> None:
        """One optimizer step over ``len(batches)`` loader batches (gradient accumulation).

        Each batch's loss is divided by the number of batches, so with equal batch sizes the step equals
        one step on their concatenation. DDP synchronises gradients on the last batch only.
        """
        if len(batches) == 1:
            self.feed_data(batches[0])
            self.optimize_parameters(current_iter)
            return
        if type(self).optimize_parameters is not TrainingMixin.optimize_parameters:
            raise NotImplementedError(f'train.accumulate_grad_batches > 1 needs SRArchModel.optimize_parameters; '
                                      f'{type(self).__name__} overrides it')
        self.optimizer_g.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for index, data in enumerate(batches):
            self.feed_data(data)
            logged = self._backward_fed_batch(current_iter, 1.0 / len(batches), sync=index == len(batches) - 1)
            for name, value in logged.items():
                totals[name] = totals.get(name, 0.0) + value / len(batches)
        self._optimizer_step(current_iter, totals)

    # ------------------------------------------------------------------ learning rate

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """Step the schedulers from iteration 2 on; during warm-up the lr is the scheduled lr x iter/warmup.

        Each scheduler is stepped from its own last (un-warmed) lr, so chained schedulers such as
        MultiStepRestartLR continue at full lr after warm-up.
        """
        if len(self.schedulers) != len(self.optimizers):
            return super().update_learning_rate(current_iter, warmup_iter)
        pairs = list(zip(self.optimizers, self.schedulers))
        if current_iter > 1:
            for optimizer, scheduler in pairs:
                for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                    group['lr'] = lr
                scheduler.step()
        if current_iter < warmup_iter:
            for optimizer, scheduler in pairs:
                for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                    group['lr'] = lr * current_iter / warmup_iter

    # ------------------------------------------------------------------ saving and resuming

    def check_finite_weights(self, current_iter: int) -> None:
        """Raise ``NonFiniteError`` naming the first NaN/inf tensor of the networks about to be saved."""
        for label, net in (('net_g', self.net_g), ('net_g_ema', getattr(self, 'net_g_ema', None))):
            if net is None:
                continue
            for name, tensor in self.get_bare_model(net).state_dict().items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise NonFiniteError(f'iteration {current_iter}: {label}.{name} holds NaN/inf; the checkpoint '
                                         'of this iteration was not written (lower train.optim_g.lr or enable '
                                         'train.grad_clip)')

    def save(self, epoch: int, current_iter: int) -> None:
        self.check_finite_weights(current_iter)
        super().save(epoch, current_iter)

    def save_network(self, net, net_label: str, current_iter: int, param_key='params') -> None:
        """Write ``models/{net_label}_{iter|latest}.pth`` atomically (rank 0 only)."""
        if self.opt.get('rank', 0) != 0:
            return
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f'save_network: {len(nets)} networks but {len(keys)} param keys')
        payload = {key: OrderedDict((name, tensor.detach().cpu()) for name, tensor in
                                    strip_prefix(self.get_bare_model(n).state_dict()).items())
                   for n, key in zip(nets, keys)}
        bare = self.get_bare_model(nets[0])
        spec = find_family_spec(type(bare).__name__)
        if spec is not None and spec.checkpoint.stored_kwargs:  # what `sr-arch infer` cannot read from shapes
            payload[NETWORK_KWARGS_KEY] = spec.stored_kwargs_of(bare)
        label = 'latest' if current_iter == -1 else current_iter
        atomic_save(payload, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def training_state(self, epoch: int, current_iter: int, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {'format': STATE_FORMAT, 'epoch': epoch, 'iter': current_iter,
                'optimizers': [o.state_dict() for o in self.optimizers],
                'schedulers': [s.state_dict() for s in self.schedulers],
                'grad_scaler': self.grad_scaler.state_dict(),
                'loop': dict(self.loop_state), 'rng': rng_states, 'world_size': self.opt.get('world_size', 1),
                'best_metric_results': getattr(self, 'best_metric_results', {})}

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """Write ``training_states/{iter}.state`` atomically; called on every rank (RNG states are gathered)."""
        if current_iter == -1:
            return
        rng_states = dist_utils.all_gather_objects(capture_rng_state())
        if self.opt.get('rank', 0) == 0:
            atomic_save(self.training_state(epoch, current_iter, rng_states),
                        os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: Mapping[str, Any]) -> None:
        super().resume_training(resume_state)
        if resume_state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
        if resume_state.get('best_metric_results'):
            self.best_metric_results = {name: {metric: dict(record) for metric, record in metrics.items()}
                                        for name, metrics in resume_state['best_metric_results'].items()}

    # ------------------------------------------------------------------ distributed validation

    @contextmanager
    def bare_network_for_inference(self):
        """Temporarily replace the DDP-wrapped ``net_g`` by its module.

        The first DDP forward after a training step broadcasts the buffers (a collective): ranks that
        validate a different number of images (or none) would wait for each other forever.
        """
        wrapped = self.net_g
        self.net_g = self.get_bare_model(wrapped)
        try:
            yield
        finally:
            self.net_g = wrapped

    def dist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """Each rank validates every ``world_size``-th image; metric means are gathered and weighted by
        image count, so the result equals a single-process validation. Rank 0 logs."""
        dataset = dataloader.dataset
        shard = DatasetShard(dataset, self.opt['rank'], self.opt['world_size'])
        dataset_name = shard.opt.get('name', 'val')
        metrics_opt = (self.opt.get('val') or {}).get('metrics')
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        local: dict[str, tuple[float, int]] = {}
        if len(shard):
            self._collecting_validation_shard = True
            try:
                loader = torch.utils.data.DataLoader(shard, batch_size=1, shuffle=False, num_workers=0)
                with self.bare_network_for_inference():
                    self.nondist_validation(loader, current_iter, None, save_img)
            finally:
                self._collecting_validation_shard = False
            if metrics_opt:
                local = {metric: (float(self.metric_results[metric]) * len(shard), len(shard))
                         for metric in metrics_opt if metric in getattr(self, 'metric_results', {})}
        if not metrics_opt:
            return
        gathered = dist_utils.all_gather_objects(local)
        self.metric_results = {}
        for metric in metrics_opt:
            total = sum(part[metric][0] for part in gathered if metric in part)
            count = sum(part[metric][1] for part in gathered if metric in part)
            self.metric_results[metric] = total / count if count else float('nan')
            self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _update_best_metric_result(self, dataset_name, metric, val, current_iter) -> None:
        if not getattr(self, '_collecting_validation_shard', False):
            super()._update_best_metric_result(dataset_name, metric, val, current_iter)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger) -> None:
        if not getattr(self, '_collecting_validation_shard', False):
            super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
