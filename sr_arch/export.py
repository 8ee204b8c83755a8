"""``sr-arch export``: a checkpoint as an ONNX model that runs at any input size, or as safetensors.

    sr-arch export --model CKPT --out FILE.onnx [--dynamic | --static H W] [--opset N] [--fp16]
    sr-arch export --model CKPT --out FILE.safetensors [--fp16]

Family, variant and scale come from the checkpoint as in ``sr-arch infer`` (``infer.load_model``: ``--param-key``,
``--scale`` and ``--arch-option`` work the same way). The ONNX graph takes ``input`` (1, 3, H, W) RGB in [0, 1] and
gives ``output`` (1, 3, scale*H, scale*W), not clamped. With ``--dynamic`` (the default) H and W are free: the
network's padding to its window multiple and the crop back are part of the graph. Before the file is written the
export is run in onnxruntime on two input sizes (one odd; the ``--static`` size for a static graph) and compared
with the PyTorch eval output; the numbers are printed, and a difference above ``1e-4 x max |output|`` (1e-2 with
``--fp16``) fails the command without writing anything. The network being exported is never modified (a
``--fp16`` export converts a copy).

How: ``torch.export`` with dynamic H and W, then ``torch.onnx.export`` (dynamo exporter, onnxscript). The networks
keep their graphs size-free where sizes are symbolic (``sr_arch.archs.layers.symbolic``): padding is a gather,
ESRT's remainder band is always there, RGT's RG-SA computes each eval step count and selects one (exact up to
``FamilySpec.max_traced_size``), LabNet's bicubic residual is a convolution. Attention is exported in its plain
``softmax(q k^T) v`` form (what exporters decompose SDPA into anyway).

``--format safetensors`` writes the network weights (official names, loadable by spandrel / chaiNNer / ComfyUI) with
the constructor arguments no shape tells (``network_kwargs``) in the file's metadata, so ``sr-arch infer`` and
``sr-arch export`` rebuild the same network from it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sr_arch.errors import ExportError, one_line

#: opsets this command writes: torch's ONNX exporter produces 18 and converts up from there
MIN_OPSET, MAX_OPSET = 18, 23
DEFAULT_OPSET = 18

#: export checks: largest |ONNX - PyTorch| allowed, relative to max(|PyTorch output|, 1)
TOLERANCE = {False: 1e-4, True: 1e-2}  # keyed by fp16

INPUT_NAME, OUTPUT_NAME = 'input', 'output'
FORMATS = {'.onnx': 'onnx', '.safetensors': 'safetensors'}


@dataclass(frozen=True)
class Check:
    """One comparison of the ONNX model with PyTorch: input size, max |difference|, max |PyTorch output|."""

    size: tuple[int, int]
    max_abs_diff: float
    max_abs_output: float

    @property
    def relative(self) -> float:
        """max |difference| / max(max |output|, 1)."""
        return self.max_abs_diff / max(self.max_abs_output, 1.0)

    def describe(self) -> str:
        h, w = self.size
        return (f'{h}x{w}: max |onnx - torch| = {self.max_abs_diff:.3g}, {self.relative:.3g} of max |output| '
                f'{self.max_abs_output:.3g}')


# ---------------------------------------------------------------------------------------------- sizes

#: the tracing example of a dynamic export (the tracer runs on fake tensors: the size costs nothing)
EXAMPLE_SIZE = (597, 855)


def example_size(pad_multiple: int, min_size: int) -> tuple[int, int]:
    """The input size a dynamic graph is traced at.

    Exporters record what holds at the example, and a size that is 1 there (or 0) can end up as a constant 1 in
    the graph; onnxruntime then fails or reuses buffers wrongly at sizes where it is not. So no size derived
    inside the networks may be 0 or 1 at the example: odd, not square, not a multiple of any window or pad
    size; ESRT's remainder band (H*W mod 4) is 3 tokens; RG-SA's maps after 2, 3 and 4 reductions are 37x53,
    9x13 and 2x3 and not multiples of 4. A coarser network than ours gets an example a few cells across.
    """
    side = max(pad_multiple, min_size)
    if side * 4 > EXAMPLE_SIZE[0]:
        return 4 * side + 3, 6 * side + 5
    return EXAMPLE_SIZE


def check_sizes(pad_multiple: int, min_size: int) -> list[tuple[int, int]]:
    """Two sizes, other than the tracing example, to compare ONNX with PyTorch on: an odd one and a larger one."""
    side = max(2 * pad_multiple, min_size, 8)
    return [(side + 3, side + pad_multiple + 2), (2 * side + pad_multiple, 3 * side + 1)]


def parse_static_size(values: Sequence[str]) -> tuple[int, int]:
    """['64', '48'] -> (64, 48); ExportError naming --static for anything but two positive integers."""
    try:
        height, width = (int(v) for v in values)
    except ValueError:
        raise ExportError(f'--static {" ".join(values)}: expected two positive integers H W, e.g. --static 256 256') \
            from None
    if height < 1 or width < 1:
        raise ExportError(f'--static {height} {width}: H and W must be positive')
    return height, width


# ---------------------------------------------------------------------------------------------- ONNX

def _example(size: tuple[int, int], dtype: torch.dtype, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *size, generator=generator).to(dtype)


@contextlib.contextmanager
def linear_time_onnx_rewrites() -> Any:
    """While active, onnxscript's graph optimizer (``optimize=True``) skips its rewrite rules whose pattern ends in
    more than one node (in onnxscript 0.7: ``SlicesSplit``, sibling Slices of one tensor merged into a Split).

    onnxscript matches such a pattern by scanning the whole graph once per candidate node, which is quadratic in the
    graph's size: for the golden LabNet (46 blocks, 7809 exported nodes) it took 238 s of a 390 s export; a 12-block
    LabNet optimizes in 3.2 s instead of 39.7 s without it. Every other rule (constant folding, fusions, dead code)
    still runs. A no-op on onnxscript versions without the private rule table.
    """
    from onnxscript import rewriter

    rules = getattr(rewriter, '_DEFAULT_REWRITE_RULES', None)
    if rules is None:
        yield
        return
    single_output = tuple(rule for rule in rules
                          if getattr(getattr(rule, '_target_pattern', None), 'has_single_output_node', True))
    rewriter._DEFAULT_REWRITE_RULES = single_output
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def trace_onnx(net: nn.Module, size: tuple[int, int], dynamic: bool, opset: int = DEFAULT_OPSET,
               max_size: int | None = None) -> Any:
    """The ONNX model (``onnx.ModelProto``) of an eval network, traced on a (1, 3, *size) input.

    Args:
        net: the network in eval mode, in the dtype to export (its parameters' dtype is the model's dtype).
        size: tracing example (H, W); with ``dynamic=False`` the only size the model accepts.
        dynamic: H and W free (``torch.export`` dynamic dims).
        opset: ONNX opset (18..23).
        max_size: largest H and W the graph computes exactly (``FamilySpec.max_traced_size``), or None.

    Raises:
        ExportError: the exporter failed (message: its first line), or a dynamic export froze a size.
    """
    from sr_arch.archs.layers import attention_backend

    dtype = next(net.parameters()).dtype
    example = _example(size, dtype)
    dims = None
    if dynamic:
        dim = torch.export.Dim.DYNAMIC(min=1, max=max_size) if max_size else torch.export.Dim.DYNAMIC
        dims = ({2: dim, 3: dim},)
    try:
        # plain attention: decomposing SDPA afterwards breaks views of its output (and ONNX gets the same ops)
        with warnings.catch_warnings(), torch.no_grad(), attention_backend('plain'), linear_time_onnx_rewrites():
            warnings.simplefilter('ignore')
            program = torch.export.export(net, (example,), dynamic_shapes=dims,
                                          prefer_deferred_runtime_asserts_over_guards=True)
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                             output_names=[OUTPUT_NAME], optimize=True, verbose=False)
    except Exception as err:  # noqa: BLE001  (exporter errors come in many types; one line for the user)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ExportError(f'the ONNX exporter failed: {type(err).__name__}: {first}') from err
    model = onnx_program.model_proto
    if dynamic:
        _name_dynamic_dims(model)
    return model


def _name_dynamic_dims(model: Any) -> None:
    """Name the input's free dims 'height' / 'width' (the exporter's are internal symbols); fail when the exporter
    froze one to the example's value."""
    input_dims = model.graph.input[0].type.tensor_type.shape.dim
    renamed = {}
    for index, name in ((2, 'height'), (3, 'width')):
        dim = input_dims[index]
        if not dim.dim_param:
            raise ExportError(f'the exporter froze the input {name} to {dim.dim_value}; the graph would only run at '
                              'that size (use --static H W for a fixed-size model)')
        renamed[dim.dim_param] = name
        dim.dim_param = name
    for dim in model.graph.output[0].type.tensor_type.shape.dim:
        if dim.HasField('dim_param'):  # ('2*s53' -> '2*height'); assigning dim_param would clear a dim_value
            for old, new in renamed.items():
                dim.dim_param = re.sub(rf'\b{re.escape(old)}\b', new, dim.dim_param)


def add_metadata(model: Any, entries: dict[str, Any]) -> None:
    """Store ``entries`` (strings, or JSON of other values) in the model's ``metadata_props``."""
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def onnx_session(model_bytes: bytes) -> Any:
    """An onnxruntime CPU session using as many threads as torch (one in the tests)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only (no constant-folding notes)
    return ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])


def run_onnx(session: Any, x: Tensor) -> Tensor:
    """(1, 3, H, W) through an onnxruntime session of an exported model -> (1, 3, sH, sW), as a torch tensor."""
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def compare(session: Any, net: nn.Module, sizes: Sequence[tuple[int, int]], fp16: bool = False) -> list[Check]:
    """Run the ONNX model and the PyTorch eval network (float32) on the same inputs of each size."""
    checks = []
    for index, size in enumerate(sizes):
        x = _example(size, torch.float32, seed=index + 1)
        with torch.no_grad():
            expected = net(x).float()
        actual = run_onnx(session, x.half() if fp16 else x).float()
        if actual.shape != expected.shape:
            raise ExportError(f'at {size[0]}x{size[1]} the ONNX output has shape {tuple(actual.shape)}, '
                              f'PyTorch {tuple(expected.shape)}')
        checks.append(Check(size, (actual - expected).abs().max().item(), expected.abs().max().item()))
    return checks


# ---------------------------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='sr-arch export', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Export a checkpoint (architecture, variant and scale detected) to ONNX, checked in '
        'onnxruntime against PyTorch before it is written, or to safetensors.',
        epilog='The ONNX model: input "input" (1, 3, H, W) RGB in [0, 1], output "output" (1, 3, sH, sW), not '
        'clamped. See docs/deploy.md for onnxruntime, TensorRT, chaiNNer and ComfyUI.')
    parser.add_argument('--model', required=True, metavar='CKPT', help='checkpoint (.pth/.pt/.safetensors)')
    parser.add_argument('--out', required=True, metavar='FILE', help='output file (.onnx or .safetensors)')
    parser.add_argument('--format', choices=sorted(set(FORMATS.values())),
                        help='output format (default: from the --out extension)')
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument('--dynamic', action='store_true', help='any input height and width (default)')
    sizes.add_argument('--static', nargs=2, metavar=('H', 'W'), help='a model for H x W inputs only')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})')
    parser.add_argument('--fp16', action='store_true', help='float16 weights, input and output (ONNX); float16 '
                        'weights (safetensors)')
    parser.add_argument('--scale', type=int, help='expected scale; an error if the checkpoint has another one')
    parser.add_argument('--param-key', default='params_ema', help='checkpoint key tried first (default params_ema, '
                        'then params, then a raw state_dict)')
    parser.add_argument('--arch-option', action='append', default=[], metavar='KEY=VALUE',
                        help='override a constructor argument the weights cannot tell, e.g. '
                        'residual_antialias=false for LabNet (YAML value; repeatable)')
    return parser


def output_format(args: argparse.Namespace) -> str:
    """'onnx' or 'safetensors', from --format or the --out extension; ExportError for a mismatch."""
    extension = os.path.splitext(args.out)[1].lower()
    fmt = args.format or FORMATS.get(extension)
    if fmt is None:
        raise ExportError(f'--out {args.out}: cannot tell the format from {extension or "no extension"!r}; '
                          'use a .onnx or .safetensors name or pass --format')
    expected = {v: k for k, v in FORMATS.items()}[fmt]
    if extension != expected:
        raise ExportError(f'--out {args.out}: a {fmt} file must end in {expected}')
    if fmt == 'safetensors' and (args.static or args.dynamic or args.opset != DEFAULT_OPSET):
        raise ExportError('--static, --dynamic and --opset apply to ONNX only (this --out is safetensors)')
    return fmt


def export_safetensors(model: Any, path: str, fp16: bool) -> str:
    """Write the network's state_dict with its stored kwargs; reload it and check the weights round-trip."""
    from sr_arch.archs import family_spec
    from sr_arch.infer import load_model
    from sr_arch.utils.checkpoint import save_safetensors

    spec = family_spec(model.detection.family)
    state = {name: (t.half() if fp16 and t.is_floating_point() else t) for name, t in model.net.state_dict().items()}
    metadata = {'sr_arch.family': spec.name, 'sr_arch.variant': model.detection.variant or '',
                'sr_arch.scale': str(model.scale)}
    save_safetensors(state, path, network_kwargs=spec.stored_kwargs_of(model.net), metadata=metadata)
    reloaded = load_model(path)
    same = all(torch.equal(a, b.to(a.dtype)) for a, b in zip(reloaded.net.state_dict().values(), state.values()))
    if reloaded.detection.describe() != model.detection.describe() or not same:
        raise ExportError(f'{path}: the written file does not load back as {model.detection.describe()}')
    return f'reloads as {reloaded.detection.describe()} with identical weights'


def export_onnx_file(model: Any, path: str, static: tuple[int, int] | None, opset: int, fp16: bool) -> list[Check]:
    """Trace, check in onnxruntime, then write ``path`` atomically; ExportError (nothing written) on failure."""
    from sr_arch.archs import family_spec
    from sr_arch.utils.checkpoint import atomic_write

    spec = family_spec(model.detection.family)
    rules = spec.size_rules(model.detection.kwargs)
    max_size = spec.max_traced_size(spec.full_kwargs(model.detection.kwargs))
    net = copy.deepcopy(model.net).half() if fp16 else model.net
    size = static or example_size(rules.pad_multiple, rules.min_size)
    onnx_model = trace_onnx(net, size, dynamic=static is None, opset=opset, max_size=max_size)
    add_metadata(onnx_model, {
        'sr_arch.family': spec.name, 'sr_arch.variant': model.detection.variant or '',
        'sr_arch.scale': str(model.scale), 'sr_arch.network_kwargs': _jsonable(model.detection.kwargs),
        'sr_arch.input': 'RGB in [0, 1], (1, 3, H, W); output (1, 3, scale*H, scale*W), not clamped',
        'sr_arch.exact_up_to': str(max_size) if static is None and max_size else ''})
    data = onnx_model.SerializeToString()
    checks = compare(onnx_session(data), model.net, [static] if static else check_sizes(*rules), fp16)
    worst = max(checks, key=lambda c: c.relative)
    if worst.relative > TOLERANCE[fp16]:
        raise ExportError(f'{path}: not written; the ONNX model differs from PyTorch at {worst.describe()} '
                          f'(allowed {TOLERANCE[fp16]:g} of max |output|)')
    atomic_write(path, lambda f: f.write(data))
    return checks


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def main(argv: list[str] | None = None) -> int:
    import sr_arch  # noqa: F401  (registers the architectures; must precede basicsr)
    from sr_arch.infer import InferenceError, load_model, parse_arch_options

    args = build_parser().parse_args(argv)
    try:
        fmt = output_format(args)
        static = parse_static_size(args.static) if args.static else None
        if not MIN_OPSET <= args.opset <= MAX_OPSET:
            raise ExportError(f'--opset {args.opset}: sr-arch export writes opsets {MIN_OPSET} to {MAX_OPSET} '
                              f"(torch's ONNX exporter starts at {MIN_OPSET})")
        model = load_model(args.model, args.param_key, args.scale, 'cpu', torch.float32,
                           parse_arch_options(args.arch_option))
    except (ExportError, InferenceError) as err:
        print(f'sr-arch export: error: {one_line(str(err))}', file=sys.stderr)
        return 2
    print(f'sr-arch export: {args.model}: {model.detection.describe()}', file=sys.stderr)
    start = time.perf_counter()
    try:
        if fmt == 'safetensors':
            print(f'sr-arch export: {export_safetensors(model, args.out, args.fp16)}')
        else:
            print('sr-arch export: tracing (torch.export + torch.onnx; minutes for large networks) ...',
                  file=sys.stderr)
            checks = export_onnx_file(model, args.out, static, args.opset, args.fp16)
            for check in checks:
                print(f'sr-arch export: onnxruntime vs PyTorch at {check.describe()}')
    except ExportError as err:
        print(f'sr-arch export: error: {one_line(str(err))}', file=sys.stderr)
        return 1
    size_mb = os.path.getsize(args.out) / 2 ** 20
    print(f'sr-arch export: wrote {args.out} ({size_mb:.1f} MiB, {time.perf_counter() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
