"""Inference side of ``SRArchModel``: padding, tiling, self-ensemble and validation with per-image metrics.

``test()`` runs the network (the EMA copy when present) in eval mode without gradients on the LR batch
``self.lq`` and always returns ``net_g`` to the mode it was in. The networks of this package take any input
size (each pads itself as its family spec says); a top-level ``pad_multiple`` in the options adds reflect
padding (bottom/right) to that multiple around any network, cropped off again. Around that:

* tiling (``val.tile`` or top-level ``tile``; ``sr_arch.utils.tiling``), tile sides multiples of the network's
  pad multiple;
* x8 self-ensemble (``val.self_ensemble: true``): flips/transposes, outputs transformed back and averaged.

``nondist_validation`` is basicsr's loop plus per-image metrics and timings, kept in
``self.validation_results[dataset_name]`` (a ``sr_arch.utils.results.DatasetResult``) for the test pipeline.

``super_resolve`` is the same inference as a function, used by ``sr-arch infer`` without a model object.
"""
from __future__ import annotations

import os.path as osp
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sr_arch.archs import find_family_spec
from sr_arch.archs.layers import pad_to_multiple, pad_to_size
from sr_arch.archs.spec import SizeRules
from sr_arch.utils.results import DatasetResult, ImageResult
from sr_arch.utils.tiling import Forward, TileOptions, Tiler

#: the x8 dihedral group as (transpose H/W, flip W, flip H), applied in that order
ENSEMBLE_TRANSFORMS = tuple((bool(k & 4), bool(k & 1), bool(k & 2)) for k in range(8))


def dihedral_transform(x: Tensor, transpose: bool, flip_w: bool, flip_h: bool) -> Tensor:
    """(..., H, W) -> the image transposed and/or flipped (shape (..., W, H) when transposed)."""
    if transpose:
        x = x.transpose(-2, -1)
    if flip_w:
        x = x.flip(-1)
    if flip_h:
        x = x.flip(-2)
    return x


def dihedral_inverse(x: Tensor, transpose: bool, flip_w: bool, flip_h: bool) -> Tensor:
    """Undo ``dihedral_transform`` with the same arguments."""
    if flip_h:
        x = x.flip(-2)
    if flip_w:
        x = x.flip(-1)
    if transpose:
        x = x.transpose(-2, -1)
    return x


def pad_for_network(lq: Tensor, pad_multiple: int = 1, min_size: int = 1) -> Tensor:
    """(B, C, H, W) -> reflect-padded (bottom/right) to H, W >= ``min_size`` and multiples of ``pad_multiple``."""
    return pad_to_multiple(pad_to_size(lq, min_size, min_size), pad_multiple)[0]


def padded_forward(run: Forward, lq: Tensor, scale: int, pad_multiple: int = 1, min_size: int = 1) -> Tensor:
    """``run`` on any (B, C, H, W): ``pad_for_network``, run, crop the output to (B, C', scale*H, scale*W)."""
    h, w = lq.shape[-2:]
    return run(pad_for_network(lq, pad_multiple, min_size))[..., :h * scale, :w * scale]


def super_resolve(forward: Forward, lq: Tensor, scale: int, tiler: Tiler | None = None,
                  self_ensemble: bool = False) -> Tensor:
    """Full inference on a (B, C, H, W) LR batch -> (B, C', scale*H, scale*W).

    ``forward`` must accept any H, W (e.g. ``padded_forward`` around the network). With ``tiler`` the
    image is processed in overlapping tiles; with ``self_ensemble`` the 8 flips/transposes are run
    (each tiled, if tiling) and their back-transformed outputs averaged.
    """
    def run(x: Tensor) -> Tensor:
        return tiler(forward, x, scale) if tiler is not None else forward(x)

    if not self_ensemble:
        return run(lq)
    total = None
    for transform in ENSEMBLE_TRANSFORMS:
        out = dihedral_inverse(run(dihedral_transform(lq, *transform)), *transform).float()
        total = out if total is None else total + out
    return (total / len(ENSEMBLE_TRANSFORMS)).to(out.dtype)


def default_metrics(scale: int) -> dict[str, dict[str, Any]]:
    """PSNR and SSIM on the Y channel with crop border = scale (basicsr's MATLAB-compatible functions)."""
    return {'psnr': {'type': 'calculate_psnr', 'crop_border': scale, 'test_y_channel': True},
            'ssim': {'type': 'calculate_ssim', 'crop_border': scale, 'test_y_channel': True}}


def network_size_rules(network_opt: dict[str, Any] | None) -> SizeRules:
    """The size rules of ``network_g``'s family (``FamilySpec.size_rules``); (1, 1) for other networks."""
    network_opt = dict(network_opt or {})
    spec = find_family_spec(network_opt.pop('type', None))
    return spec.size_rules(network_opt) if spec is not None else SizeRules(1, 1)


class InferenceMixin:
    """Mixed into basicsr's ``SRModel``; expects ``self.opt``, ``self.net_g``, ``self.lq``."""

    @property
    def pad_multiple(self) -> int:
        """The option file's ``pad_multiple``, else the network's own (tile sides are multiples of it)."""
        return int(self.opt.get('pad_multiple') or network_size_rules(self.opt.get('network_g')).pad_multiple)

    def inference_network(self) -> nn.Module:
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def forward_any_size(self, net: nn.Module, lq: Tensor) -> Tensor:
        """(B, C, H, W) of any size -> (B, C, sH, sW); padded to the option file's ``pad_multiple`` if it has one."""
        multiple = self.opt.get('pad_multiple')
        return padded_forward(net, lq, self.opt['scale'], int(multiple)) if multiple else net(lq)

    def tile_options(self) -> TileOptions | None:
        """``val.tile`` if present, else the top-level ``tile`` block (HAT's official place), else None."""
        val_opt = self.opt.get('val') or {}
        if val_opt.get('tile'):
            return TileOptions.from_opt(val_opt['tile'], 'val.tile')
        return TileOptions.from_opt(self.opt.get('tile'), 'tile')

    def tiler(self) -> Tiler | None:
        """The ``Tiler`` for the current options, kept between calls (an 'auto' tile size is measured once)."""
        options = self.tile_options()
        if options is None:
            return None
        cached = getattr(self, '_tiler', None)
        if cached is None or cached.options != options:
            self._tiler = Tiler(options, multiple=self.pad_multiple)
        return self._tiler

    def test(self) -> None:
        net = self.inference_network()
        was_training = self.net_g.training
        net.eval()
        try:
            with torch.no_grad():
                self_ensemble = bool((self.opt.get('val') or {}).get('self_ensemble', False))
                self.output = super_resolve(lambda x: self.forward_any_size(net, x), self.lq, self.opt['scale'],
                                            self.tiler(), self_ensemble)
        finally:
            if was_training:
                self.net_g.train()

    # ------------------------------------------------------------------ validation

    def validation_metrics(self) -> dict[str, dict[str, Any]] | None:
        """The ``val.metrics`` block (None: no metrics)."""
        return (self.opt.get('val') or {}).get('metrics')

    def save_image_path(self, dataset_name: str, img_name: str, current_iter: Any) -> str:
        """basicsr's layout: training ``visualization/<img>/<img>_<iter>.png``, testing
        ``visualization/<dataset>/<img>_<val.suffix or name>.png``."""
        visualization = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(visualization, img_name, f'{img_name}_{current_iter}.png')
        suffix = (self.opt.get('val') or {}).get('suffix') or self.opt['name']
        return osp.join(visualization, dataset_name, f'{img_name}_{suffix}.png')

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        """basicsr's validation loop, recording each image's metrics and inference time.

        Averages go to ``self.metric_results`` (best-metric bookkeeping and logging as in basicsr);
        the per-image records to ``self.validation_results[dataset_name]``.
        """
        from basicsr.metrics import calculate_metric
        from basicsr.utils import imwrite, tensor2img
        from tqdm import tqdm

        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.validation_metrics()
        if metrics_opt is not None:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: 0.0 for metric in metrics_opt}
        result = DatasetResult(dataset_name)
        pbar = tqdm(total=len(dataloader), unit='image') if (self.opt.get('val') or {}).get('pbar') else None
        for val_data in dataloader:
            self.feed_data(val_data)
            seconds = self._timed(self.test)
            visuals = self.get_current_visuals()
            names = [osp.splitext(osp.basename(path))[0] for path in val_data['lq_path']]
            for index, img_name in enumerate(names):
                sr_img = tensor2img([visuals['result'][index]])
                metrics = {}
                if metrics_opt is not None and 'gt' in visuals:
                    metric_data = {'img': sr_img, 'img2': tensor2img([visuals['gt'][index]])}
                    metrics = {name: float(calculate_metric(metric_data, opt_)) for name, opt_ in metrics_opt.items()}
                result.images.append(ImageResult(img_name, metrics, seconds / len(names)))
                if save_img:
                    imwrite(sr_img, self.save_image_path(dataset_name, img_name, current_iter))
            self._release_validation_tensors()
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f'Test {names[-1]}')
        if pbar is not None:
            pbar.close()
        if not hasattr(self, 'validation_results'):
            self.validation_results = {}
        self.validation_results[dataset_name] = result
        if metrics_opt is not None and any(image.metrics for image in result.images):
            averages = result.averages()
            for metric in metrics_opt:
                self.metric_results[metric] = averages.get(metric, float('nan'))
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger) -> None:
        """basicsr's ``Validation <set>`` lines; when testing (``current_iter`` is the run's name, not an
        iteration) without its ``Best: ... @ <name> iter`` part, which only means something in training."""
        if isinstance(current_iter, int) or getattr(self, '_collecting_validation_shard', False):
            super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
            return
        from basicsr.utils import get_root_logger

        lines = [f'Validation {dataset_name}'] + [f'\t # {metric}: {value:.4f}'
                                                  for metric, value in self.metric_results.items()]
        get_root_logger().info('\n'.join(lines) + '\n')

    def _timed(self, fn: Callable[[], None]) -> float:
        """Seconds ``fn()`` takes, waiting for the GPU to finish."""
        cuda = getattr(self, 'device', torch.device('cpu')).type == 'cuda'
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def _release_validation_tensors(self) -> None:
        for name in ('lq', 'gt', 'output'):
            if hasattr(self, name):
                delattr(self, name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
