"""Testing entry point: ``python test.py -opt FILE`` / ``sr-arch test -opt FILE`` (BasicSR-compatible).

For every dataset of the option file (``datasets: {test_1: ..., test_2: ...}``) the model is run
through its validation loop (``InferenceMixin.nondist_validation``: padding, ``tile``/``val.tile``,
``val.self_ensemble``), and ``results/<name>/`` (under the current directory) receives:

* ``summary.md`` / ``summary.csv`` / ``summary.json``: mean of each metric per dataset, seconds per image;
* ``per_image.csv`` / ``per_image.json``: every image's metrics;
* ``paper.md`` / ``paper.json``: the table of a paper: one row per model, a ``PSNR / SSIM`` column per
  set, the published numbers of the tested variant (``sr_arch/data/published_results.yaml``) and the
  difference; with ``--bicubic`` also MATLAB bicubic measured on the same data, published and difference;
* ``visualization/<dataset>/<image>_<suffix or name>.png`` when ``val.save_img`` is true;
* ``test_<name>_<time>.log``.

Metrics are the option file's ``val.metrics``; without that block, PSNR and SSIM on the Y channel with
crop border = scale (basicsr's MATLAB-compatible ``calculate_psnr`` / ``calculate_ssim``). A progress
bar per dataset is on unless ``val.pbar: false``.

As in training, the option file is checked before anything runs (the papers' own files included:
docs/reliability.md); testing also runs on the CPU when ``num_gpu`` asks for more GPUs than there are, and
skips datasets of a ``train`` phase. Every LR image must be its GT's size / scale (within the mod-crop), and a
checkpoint of a known family must have the option file's scale. ``--sets Set5,Urban100`` (or
``--force_yml datasets:test_3=~``) picks the datasets without editing the option file. Option, checkpoint and
data errors end the command with ``test: error: <message>`` (exit status 1, no traceback).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from typing import Any, NamedTuple

import sr_arch  # noqa: F401  (registers everything, applies compat fixes)
from sr_arch.errors import OptionError, SRArchError
from sr_arch.train import build_dataset_checked
from sr_arch.utils.dist import cleanup_distributed, get_rank, is_distributed
from sr_arch.utils.options import parse_options


def parse_test_options(argv: list[str], root_path: str) -> dict[str, Any]:
    """The training pipeline's option parsing (``-opt``, ``--launcher``, ``--force_yml``...), ``is_train=False``:
    official names resolved, ignored keys and repeated YAML keys reported, ``num_gpu`` above the visible GPUs
    tested on what there is, datasets of a ``train`` phase skipped (``sr_arch.utils.options``)."""
    return parse_test_arguments(argv, root_path)[0]


def parse_test_arguments(argv: list[str], root_path: str) -> tuple[dict[str, Any], argparse.Namespace]:
    """``(opt, args)``: the parsed options and the command line (``args.sets``, ``.bicubic``, ``.published``)."""
    return parse_options(root_path, is_train=False, argv=list(argv))


def require_test_datasets(opt: dict[str, Any]) -> None:
    """``OptionError`` when no dataset is left to test (none given, or only a ``train`` one, which is skipped)."""
    if not opt.get('datasets'):
        raise OptionError(f"{opt.get('opt_path', '<options>')}: datasets: no test dataset, e.g. datasets: "
                          '{test_1: {name: Set5, type: PairedImageDataset, dataroot_gt: ..., dataroot_lq: ...}}')


def build_test_dataset(phase: str, dataset_opt: dict[str, Any], opt: dict[str, Any]) -> Any:
    """basicsr's ``build_dataset``; a missing folder, unmatched LR/GT names or a bad key is an ``OptionError``
    naming the option block (one line, as in training)."""
    return build_dataset_checked(dataset_opt, phase, opt.get('opt_path', '<options>'))


def gather_dataset_result(result: Any, opt: dict[str, Any]) -> Any:
    """Under DDP each rank validated every world_size-th image; put rank 0's record back in dataset order."""
    if not opt.get('dist'):
        return result
    from sr_arch.utils.dist import all_gather_objects
    from sr_arch.utils.results import DatasetResult

    shards = [shard.images for shard in all_gather_objects(result)]
    merged = DatasetResult(result.name)
    for index in range(max(len(images) for images in shards)):
        merged.images += [images[index] for images in shards if index < len(images)]
    return merged


def prepare_validation_options(opt: dict[str, Any]) -> None:
    """Fill ``val`` defaults: no saving, PSNR/SSIM (Y, crop = scale) when no metrics are configured."""
    from sr_arch.models.inference import default_metrics

    val = opt.setdefault('val', {}) or {}
    opt['val'] = val
    val.setdefault('save_img', False)
    val.setdefault('pbar', opt.get('rank', 0) == 0)  # a bar per dataset on the main process, unless pbar: false
    if not val.get('metrics'):
        val['metrics'] = default_metrics(int(opt['scale']))


def describe_settings(opt: dict[str, Any]) -> str:
    """One line: network, weights, tiling, self-ensemble (the title of the summary table)."""
    network = opt.get('network_g', {}).get('type', '?')
    weights = opt.get('path', {}).get('pretrain_network_g') or 'random init'
    if network == 'Bicubic':
        weights = 'none (MATLAB bicubic)'
    val = opt.get('val') or {}
    tile = val.get('tile') or opt.get('tile')
    parts = [f"{opt['name']}: {network} x{opt['scale']}", f'weights {weights}']
    parts.append(f'tiles {tile}' if tile else 'whole images')
    if val.get('self_ensemble'):
        parts.append('x8 self-ensemble')
    return ', '.join(parts)


def build_test_loaders(opt: dict[str, Any]) -> list[Any]:
    """One dataloader per ``datasets`` entry (sorted by key), each checked with ``check_lr_sizes`` first."""
    from basicsr.data import build_dataloader

    logger = logging.getLogger('basicsr')
    loaders = []
    for key, dataset_opt in sorted(opt['datasets'].items()):
        dataset = build_test_dataset(key, dataset_opt, opt)
        check_lr_sizes(dataset, int(opt['scale']), f"{opt.get('opt_path', '<options>')}: datasets.{key}")
        loaders.append(build_dataloader(dataset, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                                        seed=opt['manual_seed']))
        logger.info(f"Number of test images in {dataset_opt['name']}: {len(dataset)}")
    return loaders


def run_tests(opt: dict[str, Any], loaders: list[Any] | None = None) -> list[Any]:
    """Build the loaders (unless given) and the model, validate every dataset; returns the ``DatasetResult`` list."""
    from basicsr.models import build_model

    logger = logging.getLogger('basicsr')
    if loaders is None:
        loaders = build_test_loaders(opt)
    check_checkpoint_scale(opt)
    model = build_model(opt)
    results = []
    for loader in loaders:
        name = loader.dataset.opt['name']
        logger.info(f'Testing {name}...')
        model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val']['save_img'])
        local = getattr(model, 'validation_results', {}).get(name)
        if local is None:  # a rank with no image of a tiny dataset
            from sr_arch.utils.results import DatasetResult
            local = DatasetResult(name)
        results.append(gather_dataset_result(local, opt))
    return results


def main(argv: list[str] | None = None) -> int:
    """``test.py`` / ``sr-arch test``: 0 on success, 1 with a one-line error (option, checkpoint, data...)."""
    try:
        return run_test_pipeline(argv)
    except SRArchError as err:
        prefix = f'[rank {get_rank()}] ' if is_distributed() else ''
        print(f'{prefix}test: error: {err}', file=sys.stderr, flush=True)
        return 1
    finally:
        cleanup_distributed()


def run_test_pipeline(argv: list[str] | None = None) -> int:
    """Parse the options, test every dataset, write ``results/<name>/``; errors propagate."""
    from basicsr.utils import get_env_info, get_root_logger, get_time_str, make_exp_dirs
    from basicsr.utils.options import dict2str

    from sr_arch.utils.results import markdown_table, write_results

    argv = sys.argv[1:] if argv is None else list(argv)
    opt, args = parse_test_arguments(argv, os.getcwd())
    require_test_datasets(opt)
    prepare_validation_options(opt)
    make_exp_dirs(opt)
    log_file = os.path.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))

    loaders = build_test_loaders(opt)
    results = run_tests(opt, loaders)
    bicubic_results = run_tests(bicubic_options(opt), loaders) if args.bicubic else None
    if opt.get('rank', 0) != 0:
        return 0
    title = describe_settings(opt)
    paths = write_results(opt['path']['results_root'], results, title)
    logger.info('\n' + markdown_table(results, title).split('\n## ')[0])
    paths.update(write_gaussian8_averages(opt['path']['results_root'], results, logger))
    paths.update(write_paper(opt, results, bicubic_results, args.published, logger))
    logger.info(f"Results written to {', '.join(paths.values())}")
    return 0


def write_gaussian8_averages(folder: str, results: list[Any], logger: logging.Logger) -> dict[str, str]:
    """Datasets named ``<Set>_sig<sigma>`` (LabNet's Gaussian8 test options) are also averaged per set."""
    from sr_arch.utils.results import summary_dict, write_set_averages

    summary = summary_dict(results)
    try:
        from sr_arch.data.gaussian8 import average_over_widths
    except ImportError:
        return {}
    try:
        averages = average_over_widths(summary)
    except ValueError as err:  # e.g. a partial run: report per width only
        logger.warning(f'No Gaussian8 averages: {err}')
        return {}
    if set(averages) == set(summary):  # no dataset was a kernel width of a set
        return {}
    return write_set_averages(folder, averages, 'Gaussian8: mean over the 8 kernel widths')


# ---------------------------------------------------------------------------------------------- checks


def _image_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image file from its header (PIL), or by decoding it (OpenCV); None if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except Exception:  # noqa: BLE001  (PIL missing or a format it does not know: decode instead)
        import cv2

        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        return None if image is None else image.shape[:2]


def _lmdb_sizes(dataroot: str) -> dict[str, tuple[int, int]]:
    from sr_arch.data.prepare.lmdb_store import read_meta_info

    try:
        return {key: shape[:2] for key, shape in read_meta_info(dataroot).items()}
    except Exception:  # noqa: BLE001  (an LMDB without meta_info: the dataset reports it itself)
        return {}


class LRSizeProblem(NamedTuple):
    """An LR image that is not its GT's size // scale: file name, LR (h, w), GT (H, W)."""

    name: str
    lr: tuple[int, int]
    gt: tuple[int, int]

    def describe(self, scale: int) -> str:
        return (f'{self.name}: LR {self.lr[0]}x{self.lr[1]}, GT {self.gt[0]}x{self.gt[1]} / {scale} '
                f'-> {self.gt[0] // scale}x{self.gt[1] // scale}')


def lr_size_problems(dataset: Any, scale: int) -> list[LRSizeProblem]:
    """The pairs of ``dataset`` whose LR is not (GT height // scale, GT width // scale) (empty: all fine).

    Reads the image headers of a paired dataset with ``paths`` entries (``gt_path``, ``lq_path``) on disk,
    or the ``meta_info.txt`` sizes of LMDBs; other datasets (LR only, on-the-fly degradation) are not checked.
    """
    paths = getattr(dataset, 'paths', None)
    opt = getattr(dataset, 'opt', {}) or {}
    if not paths or not isinstance(paths[0], dict) or not {'gt_path', 'lq_path'} <= set(paths[0]):
        return []
    backend = (opt.get('io_backend') or {}).get('type', 'disk')
    if backend == 'lmdb':
        gt_size, lq_size = _lmdb_sizes(opt['dataroot_gt']).get, _lmdb_sizes(opt['dataroot_lq']).get
    elif backend == 'disk':
        gt_size = lq_size = _image_size
    else:
        return []
    problems = []
    for pair in paths:
        gt, lq = gt_size(pair['gt_path']), lq_size(pair['lq_path'])
        if gt is None or lq is None:
            continue  # unreadable: the dataset's own error names it when it gets there
        if (lq[0], lq[1]) != (gt[0] // scale, gt[1] // scale):
            problems.append(LRSizeProblem(os.path.basename(pair['lq_path']), (lq[0], lq[1]), (gt[0], gt[1])))
    from sr_arch.utils.results import natural_key

    return sorted(problems, key=lambda problem: natural_key(problem.name))


def check_lr_sizes(dataset: Any, scale: int, where: str) -> None:
    """Raise ``OptionError`` naming the files when some LR image is not its GT's size / ``scale``."""
    problems = lr_size_problems(dataset, scale)
    if not problems:
        return
    opt = getattr(dataset, 'opt', {}) or {}
    ratios = {round(p.gt[0] / p.lr[0]) for p in problems if p.lr[0] > 0}
    hint = f' (they look x{ratios.pop()})' if len(ratios) == 1 else ''
    shown = '; '.join(p.describe(scale) for p in problems[:3])
    shown += f'; and {len(problems) - 3} more' if len(problems) > 3 else ''
    raise OptionError(f"{where} ({opt.get('name', '?')}): {len(problems)} of {len(dataset.paths)} LR images are not "
                      f"their GT's size / scale {scale}{hint}: {shown}. Is dataroot_lq ({opt.get('dataroot_lq')}) "
                      f'the X{scale} folder?')


def check_checkpoint_scale(opt: dict[str, Any]) -> None:
    """Raise ``OptionError`` when ``path.pretrain_network_g`` holds a known network of another scale.

    The message is ``sr-arch infer``'s ("the checkpoint is ESRT x2, it cannot upscale x4"). Only for
    ``network_g`` types of the families (``sr_arch.archs.FAMILIES``); other networks, checkpoints
    it does not recognise and unreadable files are left to the weight loading.
    """
    path = (opt.get('path') or {}).get('pretrain_network_g')
    scale = int(opt['scale'])
    upscale = (opt.get('network_g') or {}).get('upscale')
    source = opt.get('opt_path', '<options>')
    if upscale is not None and upscale != scale:
        raise OptionError(f'{source}: network_g.upscale is {upscale} but scale is {scale}; they must agree')
    from sr_arch.archs import find_family_spec
    from sr_arch.utils.detect import detect_architecture

    if not path or not os.path.isfile(path) or find_family_spec((opt.get('network_g') or {}).get('type')) is None:
        return
    from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

    try:
        param_key = (opt.get('path') or {}).get('param_key_g', 'params')
        detection = detect_architecture(extract_state_dict(load_checkpoint(path), param_key, source=path),
                                        source=path, verify=False)
    except Exception:  # noqa: BLE001  (not one of our families, or unreadable: the weight loading reports it)
        return
    if detection.scale != scale:
        raise OptionError(f'{path}: the checkpoint is {detection.describe()}, it cannot upscale x{scale} '
                          f'({source} has scale: {scale}; use an x{detection.scale} test file or an x{scale} '
                          'checkpoint)')


# ---------------------------------------------------------------------------------------------- paper table


def bicubic_options(opt: dict[str, Any]) -> dict[str, Any]:
    """``opt`` with the network replaced by MATLAB bicubic (no weights, no tiling or ensemble, no images saved)."""
    bicubic = copy.deepcopy(opt)
    bicubic['network_g'] = {'type': 'Bicubic', 'upscale': int(opt['scale'])}
    bicubic['model_type'] = 'SRArchModel'
    bicubic['path'] = {**bicubic.get('path', {}), 'pretrain_network_g': None}
    for key in ('tile', 'pad_multiple'):  # padding would change the border pixels MATLAB computes
        bicubic.pop(key, None)
    val = bicubic.setdefault('val', {})
    for key in ('tile', 'self_ensemble'):
        val.pop(key, None)
    val['save_img'] = False
    return bicubic


def _set_values(results: list[Any]) -> dict[str, dict[str, float | None]]:
    """{column: {'psnr', 'ssim'}} of the datasets that have either metric; Gaussian8 widths averaged per set."""
    from sr_arch.utils.published import canonical_set
    from sr_arch.utils.results import summary_dict

    summary = summary_dict(results)
    try:
        from sr_arch.data.gaussian8 import average_over_widths

        summary = average_over_widths(summary)
    except (ImportError, ValueError):  # no Gaussian8 module, or a partial run: one column per dataset
        pass
    values = {}
    for name, metrics in summary.items():
        if metrics.get('psnr') is not None or metrics.get('ssim') is not None:
            values[canonical_set(name) or name] = {'psnr': metrics.get('psnr'), 'ssim': metrics.get('ssim')}
    return values


def paper_rows(opt: dict[str, Any], results: list[Any], bicubic_results: list[Any] | None = None,
               published: str | None = None) -> tuple[list[Any], list[str]]:
    """Rows and set columns of ``paper.md``: [Bicubic ours, published, difference], model ours, published,
    difference. ``published``: the data file's model name to compare with ('none': no published row;
    default: ``variant_of_options(opt)``)."""
    from sr_arch.utils.published import load_published, published_result, variant_of_options
    from sr_arch.utils.results import PaperRow, difference_row

    scale = int(opt['scale'])
    ours_values = _set_values(results)
    known = load_published().sets
    sets = [s for s in known if s in ours_values] + [s for s in ours_values if s not in known]
    variant = variant_of_options(opt)
    if published is None:
        published = variant
    elif published.lower() == 'none':
        published = None
    rows = []

    def with_published(label: str, values: dict, model: str | None) -> None:
        ours = PaperRow(f'{label} (ours)', scale, values)
        rows.append(ours)
        if model is None:
            return
        entry = published_result(model, scale)
        if entry is None:
            ours.note = f'no published numbers of {model} x{scale} in sr_arch/data/published_results.yaml'
            return
        published_values = {name: {'psnr': entry.get(name, 'psnr'), 'ssim': entry.get(name, 'ssim')}
                            for name in sets}
        if not any(v is not None for cell in published_values.values() for v in cell.values()):
            ours.note = f'{entry.model} x{scale}: nothing published for these sets ({entry.missing})'
            return
        note = f'source: {entry.source}' + (f'; not available: {entry.missing}' if entry.missing else '')
        theirs = PaperRow(f'{entry.model} (published)', scale, published_values, 'published', note)
        rows.extend([theirs, difference_row(ours, theirs, f'{entry.model}: ours - published')])

    if bicubic_results is not None:
        with_published('Bicubic', _set_values(bicubic_results), 'Bicubic')
    if variant != 'Bicubic' or bicubic_results is None:
        label = variant or (opt.get('network_g') or {}).get('type', 'model')
        with_published(label, ours_values, published)
    return rows, sets


def write_paper(opt: dict[str, Any], results: list[Any], bicubic_results: list[Any] | None, published: str | None,
                logger: logging.Logger) -> dict[str, str]:
    """``paper.md`` / ``paper.json`` in the results folder (nothing when no dataset has PSNR or SSIM)."""
    from sr_arch.utils.results import paper_table, write_paper_table

    rows, sets = paper_rows(opt, results, bicubic_results, published)
    if not sets:
        return {}
    title = describe_settings(opt)
    logger.info('\n' + paper_table(rows, sets, title))
    return write_paper_table(opt['path']['results_root'], rows, sets, title)


if __name__ == '__main__':
    sys.exit(main())
