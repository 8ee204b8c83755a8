"""``sr-arch demo`` (``make demo``): the whole pipeline in a few minutes on a CPU.

1. A small paired dataset from the photos bundled with scikit-image: HR = photo, mod-cropped; LR = MATLAB
   bicubic (``sr-arch prepare bicubic``); the training split is stored in LMDB with basicsr's
   meta_info.txt (``sr-arch prepare lmdb``). Held-out photos are never in the training split.
2. Training of a registered network of this package (ESRT x2 by default) through the train.py pipeline
   (``sr-arch train``: tqdm progress bar, TensorBoard logs under ``tb_logger/<name>``).
3. A benchmark on the held-out photos: PSNR / SSIM (Y channel, crop = scale, basicsr's metrics) of bicubic
   and of the trained network, printed as a table and saved with side-by-side PNGs
   (bicubic | network | HR) in ``experiments/<name>/demo/``.

Everything is relative to ``--out`` (default: the current folder): ``datasets/demo``, ``experiments/<name>``,
``tb_logger/<name>``. Data already prepared is reused; the training always runs afresh.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import yaml

from sr_arch.errors import DemoError

#: photos the network trains on, and the held-out photos it is scored on (disjoint; checked by pixels,
#: since scikit-image's ``cat`` is ``chelsea``)
DEMO_TRAIN_PHOTOS = ('astronaut', 'coffee', 'immunohistochemistry', 'stereo_motorcycle', 'hubble_deep_field',
                     'retina', 'moon', 'coins', 'clock', 'brick', 'grass', 'gravel', 'page', 'text', 'cell')
DEMO_HELDOUT_PHOTOS = ('chelsea', 'rocket', 'camera')
TRAIN_MAX_SIDE = 512  # training photos are centre-cropped to at most this (retina is 1411 px)
HELDOUT_SIDE = 256  # held-out photos: centre crops of this size keep the benchmark to seconds

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OPTIONS = os.path.join(REPO_ROOT, 'options', 'train', 'demo', 'train_demo_x2.yml')
LR_PATCH = 32


# ---------------------------------------------------------------------------------------------- data


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photo as (H, W, 3) uint8 BGR (grayscale photos repeated over 3 channels)."""
    import skimage.data

    try:
        img = getattr(skimage.data, name)()
    except (AttributeError, ModuleNotFoundError, OSError) as err:
        raise DemoError(f'scikit-image photo {name!r} is not available ({err})') from err
    if isinstance(img, tuple):  # stereo pairs: the left image
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., 2::-1])


def centre_crop(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    th, tw = min(h, max_side), min(w, max_side)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top:top + th, left:left + tw]


def _fingerprint(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def write_photos(folder: str, names: Sequence[str], max_side: int) -> dict[str, str]:
    """Write the photos as PNG (skipping those already there); returns name -> pixel fingerprint."""
    from sr_arch.data.prepare.common import write_png

    fingerprints = {}
    for name in names:
        img = load_photo(name)
        fingerprints[name] = _fingerprint(img)
        path = os.path.join(folder, f'{name}.png')
        if not os.path.exists(path):
            write_png(path, centre_crop(img, max_side))
    return fingerprints


@dataclass
class DemoData:
    """Paths of the prepared demo data for one scale."""

    train_gt_lmdb: str
    train_lq_lmdb: str
    heldout_gt: str
    heldout_lq: str


def prepare_data(data_root: str, scale: int, train_size: int = TRAIN_MAX_SIDE, heldout_size: int = HELDOUT_SIDE,
                 train_photos: Sequence[str] = DEMO_TRAIN_PHOTOS,
                 heldout_photos: Sequence[str] = DEMO_HELDOUT_PHOTOS) -> DemoData:
    """Build (or reuse) the demo's training LMDBs and held-out folders with the ``prepare`` steps.

    Layout: ``<data_root>/train_<size>px/{photos, GTmod{s}, LR_bicubic/X{s}, GTmod{s}.lmdb,
    LR_bicubic/X{s}.lmdb}`` and ``<data_root>/heldout_<size>px/{photos, GTmod{s}, LR_bicubic/X{s}}``.
    """
    from sr_arch.data.prepare.bicubic import generate_bicubic
    from sr_arch.data.prepare.lmdb_store import build_lmdb

    train_dir = os.path.join(data_root, f'train_{train_size}px')
    heldout_dir = os.path.join(data_root, f'heldout_{heldout_size}px')
    train_prints = write_photos(os.path.join(train_dir, 'photos'), train_photos, train_size)
    heldout_prints = write_photos(os.path.join(heldout_dir, 'photos'), heldout_photos, heldout_size)
    leaked = {n for n, p in heldout_prints.items() if p in set(train_prints.values())} | (
        set(heldout_photos) & set(train_photos))
    if leaked:
        raise DemoError(f'held-out photo(s) {sorted(leaked)} are also in the training split')

    data = DemoData(train_gt_lmdb=os.path.join(train_dir, f'GTmod{scale}.lmdb'),
                    train_lq_lmdb=os.path.join(train_dir, 'LR_bicubic', f'X{scale}.lmdb'),
                    heldout_gt=os.path.join(heldout_dir, f'GTmod{scale}'),
                    heldout_lq=os.path.join(heldout_dir, 'LR_bicubic', f'X{scale}'))
    for split_dir in (train_dir, heldout_dir):
        generate_bicubic(os.path.join(split_dir, 'photos'), os.path.join(split_dir, 'LR_bicubic', f'X{scale}'),
                         [scale], hr_output=os.path.join(split_dir, f'GTmod{scale}'))
    build_lmdb(data.train_gt_lmdb[:-len('.lmdb')], data.train_gt_lmdb)
    build_lmdb(data.train_lq_lmdb[:-len('.lmdb')], data.train_lq_lmdb)
    return data


# ---------------------------------------------------------------------------------------------- options


def network_options(arch: str, scale: int) -> dict[str, Any]:
    """``network_g`` for ``--arch``: a family (its first published variant), a published variant name (e.g.
    ``GRFormer-light``), or any other registered architecture with its defaults."""
    from basicsr.utils.registry import ARCH_REGISTRY

    from sr_arch.archs import FAMILIES

    variants = {name: spec for spec in FAMILIES.values() for name in spec.variants}
    if arch in FAMILIES:
        spec = FAMILIES[arch]
        network = {'type': spec.name, **spec.variant_kwargs(next(iter(spec.variants)), scale)}
    elif arch in variants:
        network = {'type': variants[arch].name, **variants[arch].variant_kwargs(arch, scale)}
    elif arch in ARCH_REGISTRY:
        network = {'type': arch, 'upscale': scale}
    else:
        raise DemoError(f'--arch {arch}: not a registered architecture or published variant (families: '
                        f'{", ".join(FAMILIES)}; variants: {", ".join(variants)})')
    return {k: list(v) if isinstance(v, tuple) else v for k, v in copy.deepcopy(network).items()}


def demo_options(base: dict[str, Any], args: argparse.Namespace, data: DemoData) -> dict[str, Any]:
    """The option file's contents adapted to the command line (scale, iterations, network, data, name)."""
    from sr_arch.utils.options import apply_force_yml

    opt = copy.deepcopy(base)
    s, iters = args.scale, args.iters
    if args.arch:
        opt['network_g'] = network_options(args.arch, s)
    opt['network_g']['upscale'] = s
    opt['name'] = args.name or f'demo_{args.arch or opt["network_g"]["type"]}_x{s}'
    opt['scale'] = s
    train = opt['datasets']['train']
    train.update(dataroot_gt=os.path.abspath(data.train_gt_lmdb), dataroot_lq=os.path.abspath(data.train_lq_lmdb),
                 gt_size=LR_PATCH * s)
    opt['train']['total_iter'] = iters
    if opt['train'].get('scheduler', {}).get('type') == 'CosineAnnealingRestartLR':
        opt['train']['scheduler'].update(periods=[iters], restart_weights=[1])
    opt['logger']['save_checkpoint_freq'] = iters
    opt['logger']['print_freq'] = max(1, min(opt['logger'].get('print_freq', 50), iters))
    if args.force_yml:
        apply_force_yml(opt, args.force_yml, args.opt)
    return opt


# ---------------------------------------------------------------------------------------------- training


def run_training(opt_path: str, out: str) -> None:
    """``python -m sr_arch train -opt opt_path`` in ``out``; its progress bar goes to this terminal."""
    command = [sys.executable, '-m', 'sr_arch', 'train', '-opt', os.path.abspath(opt_path)]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    process = subprocess.run(command, cwd=out, env=env)
    if process.returncode != 0:
        raise DemoError(f'training failed (exit status {process.returncode}): {" ".join(command)} in {out}')


# ---------------------------------------------------------------------------------------------- benchmark


@dataclass
class ImageScores:
    name: str
    bicubic_psnr: float
    bicubic_ssim: float
    sr_psnr: float
    sr_ssim: float


def load_trained_network(opt: dict[str, Any], checkpoint: str) -> Any:
    """The network of the options, in eval mode, with the checkpoint's weights."""
    from basicsr.archs import build_network

    from sr_arch.utils.checkpoint import extract_state_dict, load_checkpoint

    net = build_network(copy.deepcopy(opt['network_g']))
    net.load_state_dict(extract_state_dict(load_checkpoint(checkpoint), 'params_ema', source=checkpoint), strict=True)
    return net.eval()


def super_resolve_bgr(net: Any, lq_bgr: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 BGR -> (s*h, s*w, 3) uint8 BGR with the trained network."""
    import torch

    lq = torch.from_numpy(np.ascontiguousarray(lq_bgr[..., ::-1])).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        sr = net(lq)
    sr = sr[0].clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1]
    return np.round(sr * 255.0).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Images of equal height next to each other with white gaps."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = []
    for img in images:
        parts += [img, spacer]
    return np.concatenate(parts[:-1], axis=1)


def benchmark(net: Any, data: DemoData, scale: int, out_dir: str) -> list[ImageScores]:
    """Score bicubic and the network on every held-out image; writes the side-by-side PNGs to ``out_dir``."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    from sr_arch.data.prepare.common import bicubic_resize, list_images, read_image, write_png

    scores = []
    for name in list_images(data.heldout_gt):
        gt = read_image(os.path.join(data.heldout_gt, name), cv2.IMREAD_COLOR)
        lq = read_image(os.path.join(data.heldout_lq, name), cv2.IMREAD_COLOR)
        bicubic = bicubic_resize(lq, scale)
        sr = super_resolve_bgr(net, lq)
        metrics = [fn(img, gt, crop_border=scale, test_y_channel=True)
                   for img in (bicubic, sr) for fn in (calculate_psnr, calculate_ssim)]
        scores.append(ImageScores(os.path.splitext(name)[0], *map(float, metrics)))
        write_png(os.path.join(out_dir, f'{os.path.splitext(name)[0]}_x{scale}_bicubic-sr-hr.png'),
                  labelled_side_by_side(scores[-1], type(net).__name__, bicubic, sr, gt))
    return scores


def labelled_side_by_side(score: ImageScores, arch: str, bicubic: np.ndarray, sr: np.ndarray, gt: np.ndarray
                          ) -> np.ndarray:
    """bicubic | network | HR (uint8 BGR, equal sizes) with a caption under each: name, PSNR / SSIM (Y)."""
    from sr_arch.compare import labelled_panel, metric_caption, panel_row

    panels = [labelled_panel(bicubic, ['Bicubic', metric_caption(score.bicubic_psnr, score.bicubic_ssim)]),
              labelled_panel(sr, [arch, metric_caption(score.sr_psnr, score.sr_ssim)]),
              labelled_panel(gt, ['HR', ''])]
    return panel_row(panels, gap=4)


def format_table(scores: Sequence[ImageScores], arch: str, scale: int) -> str:
    """Markdown table: per image and mean, PSNR (dB) / SSIM of bicubic and of the network."""
    header = f'| x{scale} held-out | bicubic PSNR / SSIM | {arch} PSNR / SSIM | gain (dB) |'
    lines = [header, '|---|---|---|---|']
    rows = list(scores)
    mean = ImageScores('**mean**', *(float(np.mean([getattr(s, f) for s in rows]))
                                     for f in ('bicubic_psnr', 'bicubic_ssim', 'sr_psnr', 'sr_ssim')))
    for s in rows + [mean]:
        lines.append(f'| {s.name} | {s.bicubic_psnr:.2f} / {s.bicubic_ssim:.4f} | {s.sr_psnr:.2f} / {s.sr_ssim:.4f} '
                     f'| {s.sr_psnr - s.bicubic_psnr:+.2f} |')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sr-arch demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='.', help='root folder for datasets/, experiments/ and tb_logger/ '
                                                   '(default: the current folder)')
    parser.add_argument('--opt', default=DEFAULT_OPTIONS, help='base option file (default: %(default)s)')
    parser.add_argument('--iters', type=int, default=600, help='training iterations (default 600)')
    parser.add_argument('--scale', type=int, default=2, choices=(2, 3, 4), help='upscaling factor (default 2)')
    parser.add_argument('--arch', default=None,
                        help='network: a family (its first published variant, e.g. GRFormer = GRFormer-light), a '
                             'published variant (e.g. HAT-S), or any registered architecture with its default '
                             'arguments (change them with --force_yml network_g:key=value); default: the '
                             "option file's network_g (ESRT)")
    parser.add_argument('--name', default=None, help='experiment name (default demo_<arch>_x<scale>)')
    parser.add_argument('--train-size', type=int, default=TRAIN_MAX_SIDE,
                        help='training photos are centre-cropped to at most this many pixels per side '
                             '(default %(default)s)')
    parser.add_argument('--heldout-size', type=int, default=HELDOUT_SIDE,
                        help='held-out photos are centre-cropped to this size (default %(default)s)')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override any option, e.g. train:optim_g:lr=5e-4 datasets:train:batch_size_per_gpu=4')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option in ('iters', 'train_size', 'heldout_size'):
        if getattr(args, option) < 1:
            print(f'sr-arch demo: error: --{option.replace("_", "-")} must be >= 1, got {getattr(args, option)}',
                  file=sys.stderr)
            return 2
    try:
        return _demo(args)
    except DemoError as err:
        print(f'sr-arch demo: error: {err}', file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace) -> int:
    import sr_arch  # noqa: F401  (registries, compat fixes)
    from sr_arch.data.prepare.common import PrepareError
    from sr_arch.utils.files import atomic_write_text

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if not os.path.isfile(args.opt):
        raise DemoError(f'--opt {args.opt}: option file not found')
    with open(args.opt) as f:
        base = yaml.safe_load(f)
    if args.arch:
        network_options(args.arch, args.scale)  # an unknown --arch fails before any work
    timings = {}

    start = time.time()
    print(f'[1/3] data: {len(DEMO_TRAIN_PHOTOS)} training photos -> LMDB, {len(DEMO_HELDOUT_PHOTOS)} held-out photos',
          flush=True)
    try:
        data = prepare_data(os.path.join(out, 'datasets', 'demo'), args.scale, args.train_size, args.heldout_size)
    except PrepareError as err:
        raise DemoError(str(err)) from err
    timings['data'] = time.time() - start

    opt = demo_options(base, args, data)
    opt_path = os.path.join(out, 'datasets', 'demo', 'options', f'{opt["name"]}.yml')
    atomic_write_text(opt_path, yaml.safe_dump(opt, sort_keys=False))
    start = time.time()
    print(f'[2/3] training {opt["network_g"]["type"]} x{args.scale} for {args.iters} iterations '
          f'(options: {opt_path})', flush=True)
    run_training(opt_path, out)
    timings['training'] = time.time() - start

    start = time.time()
    exp_dir = os.path.join(out, 'experiments', opt['name'])
    checkpoint = os.path.join(exp_dir, 'models', 'net_g_latest.pth')
    if not os.path.isfile(checkpoint):
        raise DemoError(f'training finished without writing {checkpoint}')
    print(f'[3/3] benchmark on the held-out photos ({checkpoint})', flush=True)
    net = load_trained_network(opt, checkpoint)
    result_dir = os.path.join(exp_dir, 'demo')
    scores = benchmark(net, data, args.scale, result_dir)
    timings['benchmark'] = time.time() - start

    table = format_table(scores, opt['network_g']['type'], args.scale)
    timing_text = ', '.join(f'{k} {v:.0f} s' for k, v in timings.items())
    atomic_write_text(os.path.join(result_dir, 'results.md'),
                      f'# sr-arch demo: {opt["name"]}, {args.iters} iterations\n\n{table}\n\nTime: {timing_text}\n')
    print(f'\n{table}\n')
    print(f'time: {timing_text}')
    print(f'side-by-side images (bicubic | {opt["network_g"]["type"]} | HR) and results.md: {result_dir}')
    print(f'TensorBoard: tensorboard --logdir {os.path.join(out, "tb_logger", opt["name"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
