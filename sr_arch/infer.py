"""``sr-arch infer``: upscale image files or folders with any supported checkpoint.

    sr-arch infer --model CKPT INPUT... --out DIR [--scale S] [--tile N|auto] [--device cpu|cuda] [--ensemble]

The architecture, variant and scale come from the checkpoint's state_dict (``sr_arch.utils.detect``);
``params_ema``, ``params``, raw state_dicts and ``module.`` prefixes all load (``sr_arch.utils.checkpoint``).
Constructor arguments that no shape tells (``FamilySpec.checkpoint.stored_kwargs``, e.g. LabNet's
``residual_antialias``) come from the checkpoint when this package wrote it, else from the family's
convention for the official releases; ``--arch-option KEY=VALUE`` overrides them.
Inputs: PNG, JPEG, WebP, TIFF, BMP, 8 or 16 bit; grayscale is run as RGB and written back as grayscale;
an alpha channel is upscaled separately (bicubic) and re-attached. Folders are searched recursively and
their tree is mirrored under ``--out``. A file that fails gets a one-line error naming it and the others
are still processed; the exit status is then 1 (2 when the checkpoint itself is unusable).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from sr_arch.errors import InferenceError, one_line
from sr_arch.utils.files import IMAGE_EXTENSIONS

_EIGHT_BIT_ONLY = ('.jpg', '.jpeg', '.webp', '.bmp')
_NO_ALPHA = ('.jpg', '.jpeg')
#: TileOptions keys -> the flags of this command (error messages name what the user can type)
TILE_FLAGS = {'tile_size': '--tile', 'tile_pad': '--tile-pad', 'batch_size': '--tile-batch',
              'max_memory': '--max-memory'}

_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


# ---------------------------------------------------------------------------------------------- model

@dataclass
class LoadedModel:
    """A network ready for inference (it takes any input size) and what was detected about it."""

    net: nn.Module
    detection: Any  # sr_arch.utils.detect.Detection

    @property
    def scale(self) -> int:
        return self.detection.scale

    @property
    def pad_multiple(self) -> int:
        """Tile sides that are multiples of this need no padding inside the network."""
        from sr_arch.archs import family_spec

        return family_spec(self.detection.family).size_rules(self.detection.kwargs).pad_multiple

    def forward(self, lq: Tensor) -> Tensor:
        """(B, C, H, W) of any size -> (B, C, sH, sW)."""
        return self.net(lq)


def checkpoint_kwargs(checkpoint: Any, family: str) -> dict[str, Any]:
    """The constructor arguments no shape tells (``stored_kwargs`` of the family): those the checkpoint stores
    (written by this package), else the family's convention for the official releases."""
    from sr_arch.archs import family_spec
    from sr_arch.archs.spec import NETWORK_KWARGS_KEY

    convention = family_spec(family).checkpoint
    stored = checkpoint.get(NETWORK_KWARGS_KEY) if isinstance(checkpoint, Mapping) else None
    kwargs = dict(convention.official_kwargs)
    if isinstance(stored, Mapping):
        kwargs.update({k: v for k, v in stored.items() if k in convention.stored_kwargs})
    return kwargs


def load_model(path: str, param_key: str = 'params_ema', scale: int | None = None,
               device: torch.device | str = 'cpu', dtype: torch.dtype = torch.float32,
               arch_options: Mapping[str, Any] | None = None) -> LoadedModel:
    """Read a checkpoint, detect its network, build it and load the weights strictly.

    ``arch_options`` override constructor arguments (e.g. ``{'residual_antialias': False}``).

    Raises:
        InferenceError: unreadable file, no known network, a scale other than ``scale``, an unknown
            ``arch_options`` name, or weights that do not load (the message names the file and says what differs).
    """
    from sr_arch.archs import family_spec
    from sr_arch.utils.checkpoint import CheckpointError, extract_state_dict, load_checkpoint
    from sr_arch.utils.detect import (
        DetectionError,
        compare_state_dicts,
        describe_differences,
        detect_architecture,
        state_dict_shapes,
    )

    try:
        checkpoint = load_checkpoint(path)
        state_dict = extract_state_dict(checkpoint, param_key, source=path)
        detection = detect_architecture(state_dict, source=path, verify=False)
    except (CheckpointError, DetectionError) as err:
        raise InferenceError(str(err)) from err
    spec = family_spec(detection.family)
    unknown = sorted(set(arch_options or {}) - set(spec.full_kwargs({})))
    if unknown:
        raise InferenceError(f'--arch-option {", ".join(unknown)}: not an argument of {spec.name} '
                             f'(its arguments: {", ".join(spec.full_kwargs({}))})')
    kwargs = {**detection.kwargs, **checkpoint_kwargs(checkpoint, detection.family), **(arch_options or {})}
    detection = replace(detection, kwargs=kwargs)
    if scale is not None and scale != detection.scale:
        raise InferenceError(f'{path}: the checkpoint is {detection.describe()}, it cannot upscale x{scale} '
                             f'(leave --scale out or pass --scale {detection.scale})')
    try:
        net = spec.cls(**detection.kwargs)
    except (TypeError, ValueError) as err:
        raise InferenceError(f'{path}: {err}') from err
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        differences = compare_state_dicts(state_dict_shapes(net.state_dict()), state_dict_shapes(state_dict))
        raise InferenceError(f'{path}: looks like {detection.describe()} but its weights do not load: '
                             f'{describe_differences(*differences)}') from err
    net.eval().to(device=device, dtype=dtype)
    return LoadedModel(net, detection)


# ---------------------------------------------------------------------------------------------- images

@dataclass
class LoadedImage:
    """RGB in [0, 1] (H, W, 3) float32, optional alpha in [0, 1], and how to write it back."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    max_value: int  # 255 or 65535


def read_image(path: str) -> LoadedImage:
    """Read any 8/16-bit PNG/JPEG/WebP/TIFF/BMP (gray, gray+alpha, BGR, BGRA) as RGB in [0, 1]."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InferenceError(f'{path}: not a readable image')
    if img.dtype == np.uint8:
        max_value = 255
    elif img.dtype == np.uint16:
        max_value = 65535
    else:
        raise InferenceError(f'{path}: {img.dtype} images are not supported (8- or 16-bit integer only)')
    data = img.astype(np.float32) / max_value
    grayscale = data.ndim == 2 or data.shape[2] in (1, 2)
    alpha = None
    if data.ndim == 3 and data.shape[2] in (2, 4):
        alpha, data = data[..., -1], data[..., :-1]
    if grayscale:
        gray = data if data.ndim == 2 else data[..., 0]
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        rgb = data[..., ::-1]  # BGR -> RGB
    return LoadedImage(np.ascontiguousarray(rgb), alpha, grayscale, max_value)


def write_image(path: str, rgb: np.ndarray, alpha: np.ndarray | None, grayscale: bool, max_value: int) -> None:
    """Write RGB (and alpha) in [0, 1] as 8 or 16 bit (8 bit for formats that have no 16 bit)."""
    import cv2

    if os.path.splitext(path)[1].lower() in _EIGHT_BIT_ONLY:
        max_value = 255
    if grayscale and alpha is None:
        data = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    else:  # OpenCV writes no gray+alpha, so such images come back as BGRA
        data = rgb[..., ::-1]
    if alpha is not None:
        data = np.dstack([data, alpha])
    dtype = np.uint8 if max_value == 255 else np.uint16
    data = np.clip(np.round(data * max_value), 0, max_value).astype(dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.lower().endswith(('.jpg', '.jpeg')) else []
    if not cv2.imwrite(path, np.ascontiguousarray(data), params):
        raise InferenceError(f'{path}: could not be written')


def format_losses(ext: str, image: LoadedImage) -> list[str]:
    """What writing ``image`` as ``ext`` would drop: its alpha channel, its 16-bit depth; [] when nothing."""
    ext = ext.lower()
    lost = []
    if image.alpha is not None and ext in _NO_ALPHA:
        lost.append('its alpha channel')
    if image.max_value > 255 and ext in _EIGHT_BIT_ONLY:
        lost.append('16-bit depth (written as 8 bit)')
    return lost


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) alpha in [0, 1] -> (sH, sW), bicubic, clipped to [0, 1]."""
    import cv2

    h, w = alpha.shape
    return np.clip(cv2.resize(alpha, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def upscale_image(model: LoadedModel, image: LoadedImage, tiler: Any = None, self_ensemble: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) RGB in [0, 1] -> ((sH, sW, 3) RGB in [0, 1], upscaled alpha or None)."""
    from sr_arch.models.inference import super_resolve

    param = next(model.net.parameters())
    lq = torch.from_numpy(image.rgb).permute(2, 0, 1)[None].to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        sr = super_resolve(model.forward, lq, model.scale, tiler, self_ensemble)
    rgb = sr[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    alpha = upscale_alpha(image.alpha, model.scale) if image.alpha is not None else None
    return rgb, alpha


# ---------------------------------------------------------------------------------------------- files

def collect_inputs(inputs: list[str]) -> Iterator[tuple[str, str | None, str]]:
    """Yield (input path, error or None, output path relative to --out) for every input.

    Files are taken as given (a non-image then fails when read); folders are searched recursively for
    the supported extensions and mirrored; an empty folder or a missing path yields an error entry.
    """
    for entry in inputs:
        if os.path.isdir(entry):
            found = []
            for folder, _, files in os.walk(entry):
                found += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                yield entry, f'{entry}: no images in this folder ({", ".join(IMAGE_EXTENSIONS)})', ''
            for path in sorted(found):
                yield path, None, os.path.join(os.path.basename(os.path.normpath(entry)), os.path.relpath(path, entry))
        elif os.path.isfile(entry):
            yield entry, None, os.path.basename(entry)
        else:
            yield entry, f'{entry}: no such file or folder', ''


def output_path(out_dir: str, relative: str, suffix: str, ext: str | None) -> str:
    stem, input_ext = os.path.splitext(relative)
    return os.path.join(out_dir, f'{stem}{suffix}{ext or input_ext}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sr-arch infer',
                                     description='Upscale image files or folders with any supported checkpoint '
                                     '(architecture, variant and scale are detected).',
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files and/or folders (searched recursively)')
    parser.add_argument('--model', required=True, metavar='CKPT', help='checkpoint (.pth/.pt/.safetensors)')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--scale', type=int, help='expected scale; an error if the checkpoint has another one')
    parser.add_argument('--param-key', default='params_ema', help='checkpoint key tried first (default params_ema, '
                        'then params, then a raw state_dict)')
    parser.add_argument('--tile', help="LR tile side, or 'auto' (CPU: the fastest tile, timed on the first image; "
                        "CUDA: the largest that fits --max-memory or the free memory); default: whole image")
    parser.add_argument('--tile-pad', type=int, help='overlap between tiles in LR pixels (default min(32, tile/4); '
                        '32 with auto)')
    parser.add_argument('--tile-batch', type=int, default=1, help='tiles per forward pass (default 1)')
    parser.add_argument('--max-memory', help="memory budget for --tile auto, e.g. 4GB (optional)")
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default cpu)')
    parser.add_argument('--dtype', choices=sorted(_DTYPES), default='fp32', help='network precision (default fp32)')
    parser.add_argument('--ensemble', action='store_true', help='x8 self-ensemble (8x slower)')
    parser.add_argument('--suffix', default='', help='appended to output file names (default none)')
    parser.add_argument('--ext', help='output format, e.g. .png (default: same as the input)')
    parser.add_argument('--arch-option', action='append', default=[], metavar='KEY=VALUE',
                        help='override a constructor argument the weights cannot tell, e.g. '
                        'residual_antialias=false for LabNet (YAML value; repeatable)')
    return parser


def parse_arch_options(items: list[str]) -> dict[str, Any]:
    """['residual_antialias=false'] -> {'residual_antialias': False} (values parsed as YAML)."""
    import yaml

    options = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key.strip() or not text.strip():
            raise InferenceError(f'--arch-option {item!r}: expected KEY=VALUE, e.g. residual_antialias=false')
        try:
            options[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise InferenceError(f'--arch-option {item!r}: {text!r} is not a valid value') from None
    return options


def _tiler(args: argparse.Namespace, multiple: int, device: torch.device) -> Any:
    from sr_arch.utils.tiling import TileOptions, TileProgressBar, Tiler

    if args.tile is None:
        return None
    block: dict[str, Any] = {'batch_size': args.tile_batch}
    if args.tile_pad is not None:
        block['tile_pad'] = args.tile_pad
    if args.tile == 'auto':
        block.update(tile_size='auto', max_memory=args.max_memory)
    else:
        try:
            block['tile_size'] = int(args.tile)
        except ValueError:
            raise InferenceError(f"--tile must be a positive integer or 'auto', got {args.tile!r}") from None
    try:
        options = TileOptions.from_opt(block, '--tile', names=TILE_FLAGS)
    except ValueError as err:
        raise InferenceError(str(err)) from err
    return Tiler(options, multiple=multiple, output_device='cpu' if device.type == 'cuda' else None,
                 progress=TileProgressBar(sys.stderr), budget_name='--max-memory')


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    import sr_arch  # noqa: F401  (registers the architectures; must precede basicsr)

    args = build_parser().parse_args(argv)
    if args.ext and not args.ext.startswith('.'):
        args.ext = '.' + args.ext
    try:
        if args.ext and args.ext.lower() not in IMAGE_EXTENSIONS:
            raise InferenceError(f'--ext {args.ext}: not a format this command writes; use one of '
                                 f'{", ".join(IMAGE_EXTENSIONS)}')
        if args.max_memory is not None and args.tile != 'auto':
            raise InferenceError('--max-memory is the budget of --tile auto; add --tile auto (or leave it out)')
        device = torch.device(args.device)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise InferenceError(f'--device {args.device}: CUDA is not available on this machine')
        model = load_model(args.model, args.param_key, args.scale, device, _DTYPES[args.dtype],
                           parse_arch_options(args.arch_option))
        tiler = _tiler(args, model.pad_multiple, device)
    except InferenceError as err:
        print(f'sr-arch infer: error: {one_line(str(err))}', file=sys.stderr)
        return 2
    print(f'sr-arch infer: {args.model}: {model.detection.describe()}', file=sys.stderr)

    jobs = list(collect_inputs(args.inputs))
    failures = written = 0
    announced = False
    progress = tqdm(jobs, unit='image', file=sys.stderr)
    for path, error, relative in progress:
        progress.set_description(os.path.basename(path))
        try:
            if error is not None:
                raise InferenceError(error)
            destination = output_path(args.out, relative, args.suffix, args.ext)
            if os.path.exists(destination) and os.path.samefile(destination, path):
                raise InferenceError(f'{path}: the output would overwrite the input; use another --out or --suffix')
            image = read_image(path)
            ext = os.path.splitext(destination)[1]
            lost = format_losses(ext, image)
            if lost:
                tqdm.write(f'sr-arch infer: warning: {path}: {ext} drops {" and ".join(lost)}; '
                           'use --ext .png or .tif to keep everything', file=sys.stderr)
            rgb, alpha = upscale_image(model, image, tiler, args.ensemble)
            if tiler is not None and tiler.chosen_automatically and not announced:
                tqdm.write(f'sr-arch infer: --tile auto chose {tiler.tile_size}x{tiler.tile_size} LR tiles '
                           f'({tiler.auto_reason}; measured on {device})', file=sys.stderr)
                announced = True
            if ext.lower() in _NO_ALPHA:
                alpha = None
            write_image(destination, rgb, alpha, image.grayscale, image.max_value)
            written += 1
        except InferenceError as err:
            failures += 1
            tqdm.write(f'sr-arch infer: error: {one_line(str(err))}', file=sys.stderr)
        except Exception as err:  # noqa: BLE001  (one bad file must not stop the batch)
            failures += 1
            tqdm.write(f'sr-arch infer: error: {path}: {one_line(f"{type(err).__name__}: {err}")}', file=sys.stderr)
    progress.close()
    print(f'sr-arch infer: {written} written to {args.out}, {failures} failed', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
