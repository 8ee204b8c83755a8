"""Real-world SR training: Real-ESRGAN's second-order degradation on our models (RealNet, Real-HAT).

``RealSRNetModel`` (PSNR stage) and ``RealSRGANModel`` (GAN stage) are basicsr 1.4.2's
``RealESRNetModel`` / ``RealESRGANModel`` (degradation in ``feed_data``: blur, resize, noise, JPEG, twice,
then sinc + JPEG; USM-sharpened GT; training-pair queue) with ``InferenceMixin`` (padding, tiling,
self-ensemble, per-image validation) and ``TrainingMixin`` (AMP, clipping, compile, DDP on CPU, atomic
checkpoints, exact resume, NaN stop). ``RealHATMSEModel`` / ``RealHATGANModel`` are the official HAT
names: the same models, padding the LR input to a multiple of ``network_g.window_size`` when testing.

Fixes of basicsr's classes (docs/realsr.md):

* ``DiffJPEG`` / ``USMSharp`` are created on ``self.device`` (basicsr: ``.cuda()``), and so is the
  training-pair queue (basicsr: ``torch.zeros(...).cuda()``): training runs on the CPU;
* ``DiffJPEG``'s output is made contiguous (basicsr's ``filter2D`` views it; RuntimeError on torch 2.x);
* a batch is degraded only when it carries the dataset's kernels, so validation and TensorBoard images
  (plain LR/GT pairs or LR only) never go through the training degradation; a stale training GT is
  dropped when a validation batch has none;
* no-reference metrics (NIQE) are computed for LR-only validation / test sets (``SingleImageDataset``);
* the GAN step runs under the ``train:`` features (autocast, G gradient clipping, fp16 loss scaling,
  compile, NaN stop before any optimizer step);
* missing degradation keys and a ``queue_size`` that is not a multiple of the batch size are clear errors.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Mapping

import torch
from basicsr.losses.loss_util import get_refined_artifact_map
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.models.realesrnet_model import RealESRNetModel
from basicsr.utils import DiffJPEG, USMSharp
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor

from sr_arch.errors import RealDegradationError
from sr_arch.models.hat_model import HATModel
from sr_arch.models.inference import InferenceMixin
from sr_arch.models.training import TrainingMixin

#: top-level option keys basicsr's degradation reads (both stages)
DEGRADATION_KEYS = ('resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range',
                    'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
                    'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2',
                    'jpeg_range2', 'gt_size')
#: extra top-level keys per stage: which loss targets are USM-sharpened
PSNR_STAGE_KEYS = ('gt_usm',)
GAN_STAGE_KEYS = ('l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm')

#: basicsr metric functions that score the SR image alone (no GT needed)
NO_REFERENCE_METRICS = frozenset({'calculate_niqe'})


def check_degradation_options(opt: Mapping[str, Any], stage_keys: tuple[str, ...]) -> None:
    """Raise ``RealDegradationError`` naming the option file and the first missing top-level key."""
    source = opt.get('opt_path', '<options>')
    for key in DEGRADATION_KEYS + stage_keys:
        if key not in opt:
            raise RealDegradationError(f'{source}: missing top-level option {key!r} of the Real-ESRGAN degradation '
                                       f'(see options/train/RealNet/ for the full set)')
    queue_size = opt.get('queue_size', 180)
    batch = (opt.get('datasets', {}).get('train') or {}).get('batch_size_per_gpu')
    if not isinstance(queue_size, int) or queue_size < 1:
        raise RealDegradationError(f'{source}: queue_size must be a positive integer, got {queue_size!r}')
    if isinstance(batch, int) and queue_size % batch:
        raise RealDegradationError(f'{source}: queue_size {queue_size} must be a multiple of '
                                   f'datasets.train.batch_size_per_gpu {batch}')


class ContiguousDiffJPEG(DiffJPEG):
    """basicsr's ``DiffJPEG`` returning a contiguous tensor: its output (a permuted ``tensordot``) is not, and the
    second-stage ``filter2D`` calls ``.view`` on it (RuntimeError on torch 2.x). (B, 3, H, W) -> (B, 3, H, W)."""

    def forward(self, x: Tensor, quality: Tensor | float) -> Tensor:
        return super().forward(x, quality=quality).contiguous()


class RealDegradationMixin:
    """Device-correct Real-ESRGAN data synthesis around basicsr's ``feed_data``; expects ``self.device``."""

    def init_degradation(self) -> None:
        """``DiffJPEG``, ``USMSharp`` and the queue size, on ``self.device`` (basicsr hard-codes ``.cuda()``)."""
        self.jpeger = ContiguousDiffJPEG(differentiable=False).to(self.device)
        self.usm_sharpener = USMSharp().to(self.device)
        self.queue_size = int(self.opt.get('queue_size', 180))

    @torch.no_grad()
    def _dequeue_and_enqueue(self) -> None:
        """basicsr's training-pair pool (more degradation diversity per batch), allocated on ``self.device``.

        Until the pool holds ``queue_size`` pairs the batch is only stored; afterwards the pool is shuffled,
        its first ``b`` pairs become the batch and the new batch takes their place.
        """
        b, c, h, w = self.lq.size()
        if not hasattr(self, 'queue_lr'):
            if self.queue_size % b:
                raise RealDegradationError(f"{self.opt.get('opt_path', '<options>')}: queue_size {self.queue_size} "
                                           f'must be a multiple of the batch size {b}')
            self.queue_lr = torch.zeros(self.queue_size, c, h, w, device=self.device)
            self.queue_gt = torch.zeros(self.queue_size, *self.gt.shape[1:], device=self.device)
            self.queue_ptr = 0
        if self.queue_ptr == self.queue_size:
            order = torch.randperm(self.queue_size, device=self.device)
            self.queue_lr, self.queue_gt = self.queue_lr[order], self.queue_gt[order]
            lq_out, gt_out = self.queue_lr[:b].clone(), self.queue_gt[:b].clone()
            self.queue_lr[:b], self.queue_gt[:b] = self.lq, self.gt
            self.lq, self.gt = lq_out, gt_out
        else:
            self.queue_lr[self.queue_ptr:self.queue_ptr + b] = self.lq
            self.queue_gt[self.queue_ptr:self.queue_ptr + b] = self.gt
            self.queue_ptr += b

    def feed_data(self, data: Mapping[str, Any]) -> None:
        """Training batches of ``RealESRGANDataset`` (with ``kernel1``…) are degraded on ``self.device``:
        GT (B, 3, 400, 400) -> lq (B, 3, gt_size/s, gt_size/s), gt (B, 3, gt_size, gt_size). Other batches
        (validation pairs, LR-only sets) are used as they are."""
        synthesize = bool(self.is_train and 'kernel1' in data)
        if not synthesize and 'gt' not in data:
            for name in ('gt', 'gt_usm'):
                if hasattr(self, name):
                    delattr(self, name)
        was_train = self.is_train
        self.is_train = synthesize
        try:
            super().feed_data(data)
        finally:
            self.is_train = was_train


class NoReferenceValidationMixin:
    """Scores LR-only validation / test sets with no-reference metrics (``calculate_niqe``).

    ``InferenceMixin`` computes metrics only where a GT exists; here the SR results of GT-less batches are
    scored as they pass through ``get_current_visuals`` (after the timed forward) and merged into the
    per-image records, the averages, the best-metric bookkeeping and the log.
    """

    _no_reference_scores: list[dict[str, float]] | None = None

    def _no_reference_metric_options(self) -> dict[str, dict[str, Any]]:
        metrics = (self.opt.get('val') or {}).get('metrics') or {}
        return {name: metric for name, metric in metrics.items() if metric.get('type') in NO_REFERENCE_METRICS}

    def get_current_visuals(self) -> 'OrderedDict[str, Tensor]':
        visuals = super().get_current_visuals()
        if self._no_reference_scores is not None and 'gt' not in visuals:
            from basicsr.metrics import calculate_metric
            from basicsr.utils import tensor2img

            options = self._no_reference_metric_options()
            for sr in visuals['result']:
                image = tensor2img([sr])
                self._no_reference_scores.append({name: float(calculate_metric({'img': image}, metric))
                                                  for name, metric in options.items()})
        return visuals

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        self._no_reference_scores = [] if self._no_reference_metric_options() else None
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            scores, self._no_reference_scores = self._no_reference_scores, None
        if not scores:  # nothing to add: no such metric, or every batch had a GT (scored by the loop)
            return
        dataset_name = dataloader.dataset.opt['name']
        result = self.validation_results[dataset_name]
        for image, image_scores in zip(result.images, scores):
            image.metrics.update(image_scores)
        averages = result.averages()
        for metric in self.opt['val']['metrics']:
            self.metric_results[metric] = averages.get(metric, math.nan)
            self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)


@MODEL_REGISTRY.register()
class RealSRNetModel(RealDegradationMixin, NoReferenceValidationMixin, InferenceMixin, TrainingMixin, RealESRNetModel):
    """PSNR stage (Real-ESRNet): L1 (+ optional perceptual) on degraded LR / USM-sharpened GT pairs.

    Top-level options: the degradation keys (``DEGRADATION_KEYS``), ``gt_usm``, ``queue_size`` (180).
    """

    def __init__(self, opt: dict[str, Any]) -> None:
        if opt.get('is_train'):
            check_degradation_options(opt, PSNR_STAGE_KEYS)
        super(RealESRNetModel, self).__init__(opt)  # skip RealESRNetModel.__init__ (.cuda()); SRModel's
        self.init_degradation()


@MODEL_REGISTRY.register()
class RealSRGANModel(RealDegradationMixin, NoReferenceValidationMixin, InferenceMixin, TrainingMixin,
                     RealESRGANModel):
    """GAN stage (Real-ESRGAN): L1 + perceptual + GAN losses against ``network_d`` (UNetDiscriminatorSN).

    Top-level options: the degradation keys, ``l1_gt_usm`` / ``percep_gt_usm`` / ``gan_gt_usm`` (which
    targets are USM-sharpened), ``queue_size``. ``train:``: ``optim_g``, ``optim_d``, ``pixel_opt``,
    ``perceptual_opt``, ``gan_opt``, optional ``ldl_opt``, ``net_d_iters``, ``net_d_init_iters``; the
    ``TrainingMixin`` features (``grad_clip`` clips G only; ``accumulate_grad_batches`` must be 1).
    """

    def __init__(self, opt: dict[str, Any]) -> None:
        if opt.get('is_train'):
            check_degradation_options(opt, GAN_STAGE_KEYS)
            accumulate = (opt.get('train') or {}).get('accumulate_grad_batches', 1)
            if accumulate != 1:
                raise RealDegradationError(f"{opt.get('opt_path', '<options>')}: train.accumulate_grad_batches "
                                           f'must be 1 for the GAN stage (G and D alternate every batch), got '
                                           f'{accumulate}')
        super(RealESRGANModel, self).__init__(opt)  # skip RealESRGANModel.__init__ (.cuda()); SRGANModel's
        self.init_degradation()

    def _targets(self) -> tuple[Tensor, Tensor, Tensor]:
        """(L1 target, perceptual target, discriminator 'real' input): GT or USM-sharpened GT per option."""
        def pick(key: str) -> Tensor:
            return self.gt_usm if self.opt[key] else self.gt
        return pick('l1_gt_usm'), pick('percep_gt_usm'), pick('gan_gt_usm')

    def _discriminator(self, x: Tensor) -> Tensor:
        with self.autocast():
            return self.net_d(x).float()

    def optimize_parameters(self, current_iter: int) -> None:
        """One G step (every ``net_d_iters`` after ``net_d_init_iters``), then one D step, then EMA.

        The fed batch: ``self.lq`` (B, 3, h, w), ``self.gt`` / ``self.gt_usm`` (B, 3, s*h, s*w).
        """
        l1_gt, percep_gt, gan_gt = self._targets()
        log: dict[str, float] = {}
        for param in self.net_d.parameters():
            param.requires_grad = False
        self.optimizer_g.zero_grad(set_to_none=True)
        with self.autocast():
            self.output = getattr(self, 'train_forward', self.net_g)(self.lq)
        output = self.output.float()

        if current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters:
            terms: OrderedDict[str, Tensor] = OrderedDict()
            if self.cri_pix:
                terms['l_g_pix'] = self.cri_pix(output, l1_gt)
            if self.cri_ldl:
                with torch.no_grad():
                    output_ema = self.net_g_ema(self.lq).float()
                weight = get_refined_artifact_map(self.gt, output, output_ema, 7)
                terms['l_g_ldl'] = self.cri_ldl(weight * output, weight * self.gt)
            if self.cri_perceptual:
                with self.autocast():
                    l_percep, l_style = self.cri_perceptual(output, percep_gt)
                if l_percep is not None:
                    terms['l_g_percep'] = l_percep.float()
                if l_style is not None:
                    terms['l_g_style'] = l_style.float()
            terms['l_g_gan'] = self.cri_gan(self._discriminator(self.output), True, is_disc=False)
            log.update(self._reduced_finite_terms(terms, current_iter))
            self.grad_scaler.scale(sum(terms.values())).backward()
            self._optimizer_step(current_iter, log)  # clipping, step, scaler update, EMA
        elif getattr(self, 'ema_decay', 0) > 0:
            self.model_ema(decay=self.ema_decay)

        for param in self.net_d.parameters():
            param.requires_grad = True
        self.optimizer_d.zero_grad(set_to_none=True)
        # real and fake each get their own forward + backward, as in basicsr (one DDP forward per backward)
        real_pred = self._discriminator(gan_gt)
        l_d_real = self.cri_gan(real_pred, True, is_disc=True)
        self.grad_scaler.scale(l_d_real).backward()
        fake_pred = self._discriminator(self.output.detach().clone())
        l_d_fake = self.cri_gan(fake_pred, False, is_disc=True)
        self.grad_scaler.scale(l_d_fake).backward()
        log.update(self._reduced_finite_terms(
            OrderedDict([('l_d_real', l_d_real), ('out_d_real', real_pred.detach().mean()),
                         ('l_d_fake', l_d_fake), ('out_d_fake', fake_pred.detach().mean())]), current_iter))
        self.grad_scaler.step(self.optimizer_d)
        self.grad_scaler.update()
        self.optimizer_d.zero_grad(set_to_none=True)
        self.log_dict = OrderedDict(log)


@MODEL_REGISTRY.register()
class RealHATMSEModel(HATModel, RealSRNetModel):
    """HAT's official name for the PSNR stage: ``RealSRNetModel`` padding to ``network_g.window_size``."""


@MODEL_REGISTRY.register()
class RealHATGANModel(HATModel, RealSRGANModel):
    """HAT's official name for the GAN stage: ``RealSRGANModel`` padding to ``network_g.window_size``."""
