"""``sr-arch compare``: a paper-style visual comparison figure as a PNG.

    sr-arch compare HR.png --scale 4 --model HAT-S=experiments/pretrained_models/HAT-S_SRx4.pth \\
        --sr RGT=results/test_RGT_SRx4/visualization/Urban100 --out img_092_x4.png [--lr LR.png] [--box auto]

Left: the HR image with the zoom box drawn on it. Right: the same crop of HR, Bicubic and every
``--model`` (a checkpoint, run on the LR image like ``sr-arch infer``) and ``--sr`` (an SR image or a
folder holding one named after the HR image, e.g. test.py's ``visualization/<set>``), in command-line
order, enlarged with nearest-neighbour pixels and labelled with the method and its PSNR / SSIM on the
Y channel with crop border = scale (whole image, basicsr's MATLAB-compatible metrics, as the tables).

The LR image is ``--lr`` when given (it must be the HR's size / scale), otherwise MATLAB bicubic
downscaling of the mod-cropped HR (as ``sr-arch prepare bicubic``). The zoom box is ``--box x,y,w,h`` in
HR pixels, or by default the ``--box-size`` window where bicubic misses most detail (largest mean
|bicubic - HR|). Labels may be given as ``LABEL=PATH``; otherwise the detected variant (checkpoints) or
the folder / file name. The metrics are also printed as a table.

The rendering helpers (``labelled_panel``, ``panel_row``) also draw the demo's side-by-side images.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from sr_arch.errors import CompareError, one_line

FONT = cv2.FONT_HERSHEY_SIMPLEX
BOX_COLOUR = (0, 0, 255)  # BGR red
WHITE = 255


# ---------------------------------------------------------------------------------------------- drawing


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    return width, height + baseline


def labelled_panel(image: np.ndarray, lines: Sequence[str], font_scale: float = 0.5, width: int | None = None
                   ) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> the image above its caption lines (black, centred on white).

    ``width``: pad the panel to this width (for equal columns); the image is centred.
    """
    thickness = 1
    line_height = max(_text_size('Ag', font_scale, thickness)[1], 1) + 4
    panel_width = max([image.shape[1], width or 0] + [_text_size(t, font_scale, thickness)[0] + 6 for t in lines])
    panel = np.full((image.shape[0] + 6 + line_height * len(lines), panel_width, 3), WHITE, np.uint8)
    left = (panel_width - image.shape[1]) // 2
    panel[:image.shape[0], left:left + image.shape[1]] = image
    for index, text in enumerate(lines):
        text_width = _text_size(text, font_scale, thickness)[0]
        baseline_y = image.shape[0] + 2 + line_height * (index + 1) - 4
        cv2.putText(panel, text, ((panel_width - text_width) // 2, baseline_y), FONT, font_scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return panel


def caption_height(lines: int, font_scale: float = 0.5) -> int:
    """Pixels ``labelled_panel`` adds below an image for ``lines`` caption lines."""
    return labelled_panel(np.zeros((1, 1, 3), np.uint8), ['x'] * lines, font_scale).shape[0] - 1


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.full((height, width, 3), WHITE, np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    return out


def panel_row(panels: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Panels next to each other, top-aligned, ``gap`` white pixels apart."""
    height = max(p.shape[0] for p in panels)
    parts: list[np.ndarray] = []
    for panel in panels:
        parts += [_pad_to(panel, height, panel.shape[1]), np.full((height, gap, 3), WHITE, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def panel_column(panels: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Panels above each other, left-aligned, ``gap`` white pixels apart."""
    width = max(p.shape[1] for p in panels)
    parts: list[np.ndarray] = []
    for panel in panels:
        parts += [_pad_to(panel, panel.shape[0], width), np.full((gap, width, 3), WHITE, np.uint8)]
    return np.concatenate(parts[:-1], axis=0)


def metric_caption(psnr: float | None, ssim: float | None) -> str:
    """'28.12 dB / 0.8123', or '' for the reference."""
    if psnr is None:
        return ''
    return f'{psnr:.2f} dB / {ssim:.4f}' if ssim is not None else f'{psnr:.2f} dB'


# ---------------------------------------------------------------------------------------------- the figure


@dataclass
class Method:
    """One panel: its label, the full-size SR (or HR) image (uint8 BGR) and its metrics against HR."""

    label: str
    image: np.ndarray
    psnr: float | None = None
    ssim: float | None = None


Box = tuple[int, int, int, int]  # x, y, width, height in HR pixels


def detail_box(hr: np.ndarray, bicubic: np.ndarray, size: int) -> Box:
    """The size x size window (fully inside) with the largest mean |bicubic - HR| on the Y channel."""
    from basicsr.utils.color_util import bgr2ycbcr

    h, w = hr.shape[:2]
    size = max(8, min(size, h, w))
    error = np.abs(bgr2ycbcr(hr.astype(np.float32) / 255.0, y_only=True)
                   - bgr2ycbcr(bicubic.astype(np.float32) / 255.0, y_only=True))
    window_sum = cv2.boxFilter(error, -1, (size, size), normalize=False, anchor=(0, 0),
                               borderType=cv2.BORDER_CONSTANT)[:h - size + 1, :w - size + 1]
    y, x = np.unravel_index(int(np.argmax(window_sum)), window_sum.shape)
    return int(x), int(y), size, size


def comparison_figure(hr: np.ndarray, methods: Sequence[Method], box: Box, title: str = '', crop_side: int = 192,
                      columns: int | None = None, gap: int = 8) -> np.ndarray:
    """The figure: HR overview with the zoom box on the left, a grid of labelled crops on the right.

    ``methods`` (HR first, by convention) are cropped to ``box`` and enlarged (nearest neighbour) so that
    the crop's longer side is ``crop_side`` pixels. ``columns`` defaults to half the panels (two rows)
    from five panels on, one row below.
    """
    x, y, bw, bh = box
    zoom = crop_side / max(bw, bh)
    crop_size = (max(1, round(bw * zoom)), max(1, round(bh * zoom)))
    panels = []
    for method in methods:
        crop = cv2.resize(method.image[y:y + bh, x:x + bw], crop_size, interpolation=cv2.INTER_NEAREST)
        caption = [method.label] + ([metric_caption(method.psnr, method.ssim)] if method.psnr is not None else [''])
        panels.append(labelled_panel(crop, caption, width=crop_size[0]))
    columns = columns or (len(panels) if len(panels) <= 4 else math.ceil(len(panels) / 2))
    rows = [panel_row(panels[i:i + columns], gap) for i in range(0, len(panels), columns)]
    grid = panel_column(rows, gap)

    overview_height = max(1, grid.shape[0] - caption_height(1))
    overview_scale = overview_height / hr.shape[0]
    overview = cv2.resize(hr, (max(1, round(hr.shape[1] * overview_scale)), overview_height),
                          interpolation=cv2.INTER_AREA)
    thickness = max(2, round(overview_height / 150))
    top_left = (round(x * overview_scale), round(y * overview_scale))
    bottom_right = (round((x + bw) * overview_scale) - 1, round((y + bh) * overview_scale) - 1)
    cv2.rectangle(overview, top_left, bottom_right, BOX_COLOUR, thickness)
    left = labelled_panel(overview, [title or 'HR'])
    figure = panel_row([left, grid], gap * 2)
    return cv2.copyMakeBorder(figure, gap, gap, gap, gap, cv2.BORDER_CONSTANT, value=(WHITE, WHITE, WHITE))


# ---------------------------------------------------------------------------------------------- inputs


def y_metrics(image: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) on the Y channel, crop border = scale (basicsr's MATLAB-compatible functions), uint8 BGR."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    return (float(calculate_psnr(image, hr, crop_border=scale, test_y_channel=True)),
            float(calculate_ssim(image, hr, crop_border=scale, test_y_channel=True)))


def read_bgr(path: str, what: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 BGR (gray repeated, alpha dropped, 16 bit scaled down)."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CompareError(f'{what} {path}: not a readable image')
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., :3])


def find_sr_image(path: str, stem: str) -> str:
    """``path`` itself if a file; in a folder, the image named ``stem`` or ``stem_<suffix>`` (test.py's naming)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CompareError(f'--sr {path}: no such file or folder')
    from sr_arch.infer import IMAGE_EXTENSIONS

    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    exact = [f for f in names if os.path.splitext(f)[0] == stem]
    prefixed = [f for f in names if os.path.splitext(f)[0].startswith(f'{stem}_')]
    found = exact or prefixed
    if len(found) != 1:
        what = 'no image' if not found else f'{len(found)} images ({", ".join(found[:4])})'
        raise CompareError(f'--sr {path}: {what} named {stem}.* or {stem}_*.* in this folder')
    return os.path.join(path, found[0])


def split_label(entry: str) -> tuple[str | None, str]:
    """'LABEL=PATH' -> (LABEL, PATH); a plain path (or one that exists with '=' in it) -> (None, PATH)."""
    if '=' in entry and not os.path.exists(entry):
        label, path = entry.split('=', 1)
        return label.strip() or None, path
    return None, entry


def run_checkpoint(path: str, lr: np.ndarray, scale: int, args: argparse.Namespace) -> tuple[str, np.ndarray]:
    """(variant name, SR uint8 BGR) of a checkpoint on the LR image, as ``sr-arch infer`` runs it."""
    import torch

    from sr_arch.infer import InferenceError, LoadedImage, load_model, upscale_image
    from sr_arch.utils.tiling import TileOptions, Tiler

    try:
        model = load_model(path, scale=scale, device=torch.device(args.device))
        tiler = None
        if args.tile:
            tiler = Tiler(TileOptions.from_opt({'tile_size': args.tile}, '--tile'), multiple=model.pad_multiple)
    except (InferenceError, ValueError) as err:
        raise CompareError(one_line(str(err))) from err
    rgb = np.ascontiguousarray(lr[..., ::-1].astype(np.float32) / 255.0)
    sr, _ = upscale_image(model, LoadedImage(rgb, None, False, 255), tiler)
    name = model.detection.variant or model.detection.family
    return name, np.round(np.clip(sr, 0, 1) * 255.0).astype(np.uint8)[..., ::-1].copy()


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic upscaling of uint8 BGR with the ``Bicubic`` network, rounded to uint8."""
    import torch

    from sr_arch.archs.bicubic_arch import Bicubic

    x = torch.from_numpy(lr.astype(np.float32) / 255.0).permute(2, 0, 1)
    with torch.no_grad():
        up = Bicubic(scale)(x).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(up * 255.0).astype(np.uint8)


def parse_box(text: str) -> Box | None:
    if text == 'auto':
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box must be 'auto' or x,y,width,height in HR pixels, got {text!r}")
    if min(x, y) < 0 or min(w, h) <= 0:
        raise argparse.ArgumentTypeError(f'--box {text}: x, y must be >= 0 and width, height > 0')
    return x, y, w, h


class _AppendMethod(argparse.Action):
    """--model / --sr append (kind, value) to one list, so panels keep the command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append((self.const, values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sr-arch compare', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('hr', metavar='HR', help='the ground-truth image')
    parser.add_argument('--scale', type=int, required=True, help='upscaling factor')
    parser.add_argument('--lr', help="LR image (default: MATLAB bicubic downscaling of the mod-cropped HR)")
    parser.add_argument('--model', dest='methods', action=_AppendMethod, const='model', default=[],
                        metavar='[LABEL=]CKPT', help='a checkpoint to run on the LR image (repeatable)')
    parser.add_argument('--sr', dest='methods', action=_AppendMethod, const='sr', metavar='[LABEL=]PATH',
                        help='an SR image, or a folder with one named after the HR image (repeatable)')
    parser.add_argument('--box', type=parse_box, default=None, metavar='x,y,w,h|auto',
                        help='zoom box in HR pixels (default auto: the window where bicubic misses most detail)')
    parser.add_argument('--box-size', type=int, help='side of the auto box in HR pixels (default: 1/5 of the '
                        'shorter side)')
    parser.add_argument('--crop-side', type=int, default=192, help='displayed size of each crop (default 192 px)')
    parser.add_argument('--columns', type=int, help='crops per row (default: one row up to 4, else two rows)')
    parser.add_argument('--tile', type=int, help='tiled inference for --model, LR tile side')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N for --model (default cpu)')
    parser.add_argument('--out', help='output PNG (default <HR stem>_x<scale>_compare.png in the current folder)')
    return parser


def load_pair(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(HR mod-cropped to the scale, LR) as uint8 BGR; an --lr of the wrong size is an error."""
    from sr_arch.data.degradations import mod_crop
    from sr_arch.data.prepare.common import bicubic_resize

    hr = mod_crop(read_bgr(args.hr, 'HR'), args.scale)
    if min(hr.shape[:2]) < 2 * args.scale:
        raise CompareError(f'HR {args.hr}: {hr.shape[1]}x{hr.shape[0]} is too small for x{args.scale}')
    if args.lr is None:
        return hr, bicubic_resize(hr, 1 / args.scale)
    lr = read_bgr(args.lr, '--lr')
    expected = (hr.shape[0] // args.scale, hr.shape[1] // args.scale)
    if lr.shape[:2] != expected:
        raise CompareError(f'--lr {args.lr}: {lr.shape[0]}x{lr.shape[1]} (HxW), but the HR {hr.shape[0]}x{hr.shape[1]} '
                           f'/ {args.scale} is {expected[0]}x{expected[1]}; is it an x{args.scale} LR image?')
    return hr, lr


def collect_methods(args: argparse.Namespace, hr: np.ndarray, lr: np.ndarray) -> list[Method]:
    """HR, Bicubic, then every --model / --sr in order, with their metrics."""
    stem = os.path.splitext(os.path.basename(args.hr))[0]
    methods = [Method('HR', hr)]
    bicubic = bicubic_upscale(lr, args.scale)
    methods.append(Method('Bicubic', bicubic, *y_metrics(bicubic, hr, args.scale)))
    for kind, entry in args.methods:
        label, path = split_label(entry)
        if kind == 'model':
            name, image = run_checkpoint(path, lr, args.scale, args)
        else:
            image_path = find_sr_image(path, stem)
            if os.path.samefile(image_path, args.hr):
                raise CompareError(f'--sr {image_path}: this is the HR image itself')
            image = read_bgr(image_path, '--sr')
            name = os.path.basename(os.path.normpath(path)) if os.path.isdir(path) else os.path.splitext(
                os.path.basename(path))[0]
            if image.shape[:2] != hr.shape[:2]:
                raise CompareError(f'--sr {image_path}: {image.shape[0]}x{image.shape[1]} (HxW), but the HR '
                                   f'(mod-cropped to x{args.scale}) is {hr.shape[0]}x{hr.shape[1]}')
        methods.append(Method(label or name, image, *y_metrics(image, hr, args.scale)))
    return methods


def main(argv: list[str] | None = None) -> int:
    import sr_arch  # noqa: F401  (registries, compat fixes)
    from sr_arch.data.prepare.common import write_png

    args = build_parser().parse_args(argv)
    if args.scale < 1:
        print(f'sr-arch compare: error: --scale must be >= 1, got {args.scale}', file=sys.stderr)
        return 2
    try:
        hr, lr = load_pair(args)
        methods = collect_methods(args, hr, lr)
        box = args.box
        if box is None:
            box = detail_box(hr, methods[1].image, args.box_size or min(hr.shape[:2]) // 5)
        elif box[0] + box[2] > hr.shape[1] or box[1] + box[3] > hr.shape[0]:
            raise CompareError(f'--box {",".join(map(str, box))} does not fit in the HR image '
                               f'({hr.shape[1]}x{hr.shape[0]}, WxH, mod-cropped to x{args.scale})')
        stem = os.path.splitext(os.path.basename(args.hr))[0]
        figure = comparison_figure(hr, methods, box, f'{stem} (x{args.scale})', args.crop_side, args.columns)
        out = args.out or f'{stem}_x{args.scale}_compare.png'
        write_png(out, figure)
    except CompareError as err:
        print(f'sr-arch compare: error: {err}', file=sys.stderr)
        return 2
    width = max(len(m.label) for m in methods)
    print(f'{"method":<{width}}  PSNR (dB)  SSIM    (Y, crop {args.scale}; box x,y,w,h = {",".join(map(str, box))})')
    for method in methods[1:]:
        print(f'{method.label:<{width}}  {method.psnr:9.2f}  {method.ssim:.4f}')
    print(f'sr-arch compare: figure written to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
