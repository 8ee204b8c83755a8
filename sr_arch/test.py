"""Testing entry point: ``python test.py -opt FILE`` / ``sr-arch test -opt FILE`` (BasicSR-compatible).

For every dataset of the option file (``datasets: {test_1: ..., test_2: ...}``) the model is run
through its validation loop (``InferenceMixin.nondist_validation``: padding, ``tile``/``val.tile``,
``val.self_ensemble``), and ``results/<name>/`` (under the current directory) receives:

* ``summary.md`` / ``summary.csv`` / ``summary.json``: mean of each metric per dataset, seconds per image;
* ``per_image.csv`` / ``per_image.json``: every image's metrics;
* ``visualization/<dataset>/<image>_<suffix or name>.png`` when ``val.save_img`` is true;
* ``test_<name>_<time>.log``.

Metrics are the option file's ``val.metrics``; without that block, PSNR and SSIM on the Y channel with
crop border = scale (basicsr's MATLAB-compatible ``calculate_psnr`` / ``calculate_ssim``).

As in training, the option file is checked before anything runs (the papers' own files included:
docs/reliability.md); testing also runs on the CPU when ``num_gpu`` asks for more GPUs than there are, and
skips datasets of a ``train`` phase. Option, checkpoint and data errors end the command with
``test: error: <message>`` (exit status 1, no traceback).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import sr_arch  # noqa: F401  (registers everything, applies compat fixes)
from sr_arch.errors import OptionError, SRArchError
from sr_arch.train import build_dataset_checked
from sr_arch.utils.dist import cleanup_distributed, get_rank, is_distributed
from sr_arch.utils.options import parse_options


def parse_test_options(argv: list[str], root_path: str) -> dict[str, Any]:
    """The training pipeline's option parsing (``-opt``, ``--launcher``, ``--force_yml``...), ``is_train=False``:
    official names resolved, ignored keys and repeated YAML keys reported, ``num_gpu`` above the visible GPUs
    tested on what there is, datasets of a ``train`` phase skipped (``sr_arch.utils.options``)."""
    return parse_options(root_path, is_train=False, argv=list(argv))[0]


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
    if not val.get('metrics'):
        val['metrics'] = default_metrics(int(opt['scale']))


def describe_settings(opt: dict[str, Any]) -> str:
    """One line: network, weights, tiling, self-ensemble (the title of the summary table)."""
    network = opt.get('network_g', {}).get('type', '?')
    weights = opt.get('path', {}).get('pretrain_network_g') or 'random init'
    val = opt.get('val') or {}
    tile = val.get('tile') or opt.get('tile')
    parts = [f"{opt['name']}: {network} x{opt['scale']}", f'weights {weights}']
    parts.append(f'tiles {tile}' if tile else 'whole images')
    if val.get('self_ensemble'):
        parts.append('x8 self-ensemble')
    return ', '.join(parts)


def run_tests(opt: dict[str, Any]) -> list[Any]:
    """Build the loaders and the model, validate every dataset; returns the ``DatasetResult`` list."""
    from basicsr.data import build_dataloader
    from basicsr.models import build_model

    logger = logging.getLogger('basicsr')
    loaders = []
    for phase, dataset_opt in sorted(opt['datasets'].items()):
        dataset = build_test_dataset(phase, dataset_opt, opt)
        loaders.append(build_dataloader(dataset, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                                        seed=opt['manual_seed']))
        logger.info(f"Number of test images in {dataset_opt['name']}: {len(dataset)}")
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
    opt = parse_test_options(argv, os.getcwd())
    require_test_datasets(opt)
    prepare_validation_options(opt)
    make_exp_dirs(opt)
    log_file = os.path.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))

    results = run_tests(opt)
    if opt.get('rank', 0) != 0:
        return 0
    title = describe_settings(opt)
    paths = write_results(opt['path']['results_root'], results, title)
    logger.info('\n' + markdown_table(results, title).split('\n## ')[0])
    paths.update(write_gaussian8_averages(opt['path']['results_root'], results, logger))
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


if __name__ == '__main__':
    sys.exit(main())
