"""``sr-arch export``: ONNX graphs that run at any size, checked against the golden vectors and PyTorch in
onnxruntime; safetensors files that ``infer`` and spandrel load; one-line errors; nothing written on failure.

Exporting is slow (torch.export + torch.onnx spend ~10-50 ms per graph node on this CPU, more with dynamic sizes):
each family's golden checkpoint is exported once (module fixture) and every ONNX check reuses that file.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re

import numpy as np
import onnx
import pytest
import torch

from helpers import golden_cases, photo, write_golden_checkpoint
from sr_arch import export, infer
from sr_arch.archs import FAMILIES, family_spec
from sr_arch.archs.spec import NETWORK_KWARGS_KEY
from sr_arch.utils.checkpoint import load_checkpoint

#: one golden checkpoint per family (the first; each export takes from ~1 to ~6 minutes)
EXPORT_CASES = [golden_cases(family)[0] for family in sorted(FAMILIES)]
ACCEPTANCE = 1e-4  # max |onnx - reference| relative to max |reference|

#: the tests on the exported golden checkpoints: ~15-25 min in all on a busy 2-core CPU (LabNet's 46 blocks alone
#: take ~7 min to export); still run by ``make test``
exports_golden = pytest.mark.slow


def photo_input(height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width) in [0, 1]: side-by-side crops of real photos (enough for a 1030 px strip)."""
    strip = np.concatenate([photo('astronaut')[:400], photo('coffee')], axis=1)  # 400 x 1112
    if height > strip.shape[0] or width > strip.shape[1]:
        raise ValueError(f'{height}x{width} is larger than the photo strip {strip.shape[:2]}')
    return torch.from_numpy(np.ascontiguousarray(strip[:height, :width])).permute(2, 0, 1)[None].float() / 255.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, what
    limit = ACCEPTANCE * max(expected.abs().max().item(), 1.0)
    diff = (actual - expected).abs().max().item()
    assert diff <= limit, f'{what}: max abs diff {diff:.3g} > {limit:.3g}'


def error_line(err: str) -> str:
    """The one error line of the command's stderr (progress lines may precede it)."""
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1, err
    return errors[0]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module', params=EXPORT_CASES)
def exported(request, tmp_path_factory):
    """Export a golden checkpoint with the CLI (spying on the module it exports) and open the ONNX file."""
    case = request.param
    folder = tmp_path_factory.mktemp(case)
    checkpoint, onnx_path = str(folder / f'{case}.pth'), str(folder / f'{case}.onnx')
    golden = write_golden_checkpoint(case, checkpoint)
    loaded = []
    real_load_model = infer.load_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(infer, 'load_model', lambda *a, **k: loaded.append(real_load_model(*a, **k)) or loaded[-1])
            code, out, err = run_cli(['--model', checkpoint, '--out', onnx_path])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    with open(onnx_path, 'rb') as f:
        session = export.onnx_session(f.read())
    return dict(case=case, golden=golden, checkpoint=checkpoint, onnx=onnx_path, out=out, session=session,
                exported_model=loaded[0], folder=folder)


def reference(exported: dict, x: torch.Tensor) -> torch.Tensor:
    """Our PyTorch eval output, from a freshly loaded network."""
    net = infer.load_model(exported['checkpoint']).net
    with torch.no_grad():
        return net(x)


# ---------------------------------------------------------------------------------------------- ONNX

@exports_golden
def test_the_cli_checks_two_sizes_in_onnxruntime_and_prints_the_numbers(exported):
    lines = [line for line in exported['out'].splitlines() if 'onnxruntime vs PyTorch at' in line]
    assert len(lines) == 2, exported['out']
    sizes = [tuple(map(int, re.search(r'at (\d+)x(\d+):', line).groups())) for line in lines]
    assert any(h % 2 or w % 2 for h, w in sizes), sizes
    relative = [float(re.search(r', ([0-9.e+-]+) of max \|output\|', line).group(1)) for line in lines]
    assert max(relative) <= ACCEPTANCE, lines
    assert f'wrote {exported["onnx"]}' in exported['out']
    assert sorted(os.listdir(exported['folder'])) == sorted([os.path.basename(exported['checkpoint']),
                                                             os.path.basename(exported['onnx'])])  # no temp files


@exports_golden
def test_onnx_reproduces_the_golden_output(exported):
    golden = exported['golden']
    for index in range(golden['input'].shape[0]):  # the graph takes one image
        out = export.run_onnx(exported['session'], golden['input'][index:index + 1])
        assert_close(out, golden['output'][index:index + 1], f'{exported["case"]} image {index}')


@exports_golden
def test_onnx_equals_pytorch_at_a_larger_size(exported):
    h, w = exported['golden']['input'].shape[-2:]
    x = photo_input(h + 24, w + 40)
    assert_close(export.run_onnx(exported['session'], x), reference(exported, x), f'{exported["case"]} larger')


@exports_golden
def test_onnx_runs_at_an_odd_size_and_a_long_strip(exported):
    h, w = exported['golden']['input'].shape[-2:]
    scale = exported['exported_model'].scale
    # the strip crosses RGT's first RG-SA step threshold (a 1024 px long side): one graph, every step count
    for size in ((h + 5, w + 3), (9, 1030)):
        x = photo_input(*size)
        out = export.run_onnx(exported['session'], x)
        assert tuple(out.shape) == (1, 3, scale * size[0], scale * size[1])
        assert_close(out, reference(exported, x), f'{exported["case"]} at {size}')


@exports_golden
def test_export_leaves_the_exported_module_unchanged(exported):
    model = exported['exported_model']
    fresh = infer.load_model(exported['checkpoint'])
    exported_state = model.net.state_dict()
    for name, value in fresh.net.state_dict().items():
        assert torch.equal(exported_state[name], value), name
    x = photo_input(21, 30)
    with torch.no_grad():
        assert torch.equal(model.net(x), fresh.net(x))


@exports_golden
def test_onnx_file_says_what_it_holds(exported):
    model = onnx.load(exported['onnx'])
    meta = {p.key: p.value for p in model.metadata_props}
    detection = exported['exported_model'].detection
    assert meta['sr_arch.family'] == detection.family
    assert meta['sr_arch.scale'] == str(detection.scale)
    assert json.loads(meta['sr_arch.network_kwargs'])['upscale'] == detection.scale
    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    scale = detection.scale
    assert dims(model.graph.input[0]) == [1, 3, 'height', 'width']
    assert dims(model.graph.output[0]) == [1, 3, f'{scale}*height', f'{scale}*width']


def test_static_fp16_export(tmp_path):
    """``--static H W --fp16``: a float16 graph for one size, checked against float32 PyTorch."""
    checkpoint, out = str(tmp_path / 'esrt.pth'), str(tmp_path / 'esrt_fp16.onnx')
    golden = write_golden_checkpoint('esrt_x2', checkpoint)
    h, w = golden['input'].shape[-2:]
    code, stdout, err = run_cli(['--model', checkpoint, '--out', out, '--static', str(h), str(w), '--fp16'])
    assert code == 0, err
    assert f'at {h}x{w}:' in stdout
    model = onnx.load(out)
    elem_type = model.graph.input[0].type.tensor_type.elem_type
    assert elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, h, w]
    result = export.run_onnx(export.onnx_session(model.SerializeToString()), golden['input'].half())
    assert result.dtype == torch.float16
    diff = (result.float() - golden['output']).abs().max().item()
    assert diff <= export.TOLERANCE[True] * golden['output'].abs().max().item()


# ---------------------------------------------------------------------------------------------- graph pieces

def test_the_padding_gather_picks_the_rows_of_the_eager_padding():
    """``reflect_indices`` (the graph's padding) = ``pad_to_multiple`` / ``pad_to_size`` (repeated reflection,
    replicate for one row), including images smaller than the padding."""
    from sr_arch.archs.layers import pad_to_multiple, pad_to_size
    from sr_arch.archs.layers.windows import reflect_indices

    x = photo_input(24, 24)
    for h in range(1, 21):
        for w in (1, 2, 3, 7, 9):
            crop = x[..., :h, :w]
            padded = [pad_to_multiple(crop, m)[0] for m in (4, 8, 16)] + [pad_to_size(crop, 16, 40)]
            for expected in padded:
                rows = reflect_indices(h, expected.shape[-2])
                cols = reflect_indices(w, expected.shape[-1])
                assert torch.equal(crop.index_select(-2, rows).index_select(-1, cols), expected), (h, w)


def test_rgt_padding_rule_without_branches_equals_the_eager_rule():
    from sr_arch.archs.rgt_arch import _symbolic_min_padded_size, min_padded_size

    sides = [1, 5, 15, 16, 17, 63, 64, 200, 1023, 1024, 1025, 4095, 4096, 9000, 16383]
    for h in sides:
        for w in sides:
            assert tuple(map(int, _symbolic_min_padded_size(h, w))) == min_padded_size(h, w), (h, w)


@pytest.mark.parametrize('antialias', [True, False])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_labnet_bicubic_as_convolution_equals_interpolate(scale, antialias):
    """The exportable bicubic residual equals ``F.interpolate``: exactly in float64; in float32 within float32
    rounding (F.interpolate's own float32 result is off by ~2e-6 at x3, from rounding 1/3)."""
    import torch.nn.functional as F

    from sr_arch.archs.labnet_arch import bicubic_upscale_by_convolution

    for h, w in ((1, 1), (2, 3), (5, 4), (17, 23)):
        x = photo_input(h, w)
        size = (h * scale, w * scale)
        exact = F.interpolate(x.double(), size=size, mode='bicubic', align_corners=False, antialias=antialias)
        ours64 = bicubic_upscale_by_convolution(x.double(), scale, antialias)
        assert (ours64 - exact).abs().max().item() <= 1e-12, (h, w)
        ours32 = bicubic_upscale_by_convolution(x, scale, antialias)
        assert (ours32.double() - exact).abs().max().item() <= 1e-6, (h, w)
        torch32 = F.interpolate(x, size=size, mode='bicubic', align_corners=False, antialias=antialias)
        assert (ours32 - torch32).abs().max().item() <= 3e-6, (h, w)


# ---------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope='module')
def esrt_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('esrt') / 'esrt_x2.pth')
    write_golden_checkpoint('esrt_x2', path)
    return path


@pytest.mark.parametrize('extra, names', [
    (['--opset', '12'], '--opset 12'),
    (['--opset', '99'], '--opset 99'),
    (['--static', '0', '16'], '--static 0 16'),
    (['--static', 'a', '16'], '--static a 16'),
])
def test_bad_flags_give_one_line_errors_and_write_nothing(esrt_checkpoint, tmp_path, extra, names):
    out = str(tmp_path / 'model.onnx')
    code, stdout, err = run_cli(['--model', esrt_checkpoint, '--out', out, *extra])
    assert code == 2
    assert names in error_line(err), err
    assert not os.path.exists(out)


def test_bad_checkpoints_and_outputs_give_one_line_errors(esrt_checkpoint, tmp_path):
    missing = str(tmp_path / 'missing.pth')
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')
    for argv, names in [
        (['--model', missing, '--out', str(tmp_path / 'a.onnx')], missing),
        (['--model', str(broken), '--out', str(tmp_path / 'a.onnx')], str(broken)),
        (['--model', esrt_checkpoint, '--out', str(tmp_path / 'a.trt')], 'a.trt'),
        (['--model', esrt_checkpoint, '--out', str(tmp_path / 'a.onnx'), '--format', 'safetensors'], '.safetensors'),
        (['--model', esrt_checkpoint, '--out', str(tmp_path / 'a.safetensors'), '--static', '8', '8'], '--static'),
        (['--model', esrt_checkpoint, '--out', str(tmp_path / 'a.onnx'), '--scale', '4'], '--scale 2'),
    ]:
        code, _, err = run_cli(argv)
        assert code == 2, argv
        assert names in error_line(err), (argv, err)
    assert sorted(os.listdir(tmp_path)) == ['broken.pth']


def test_a_failed_onnxruntime_check_writes_nothing(esrt_checkpoint, tmp_path, monkeypatch):
    """The file is written only after the check passes; an existing file is left as it was."""
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'previous export')
    monkeypatch.setattr(export, 'trace_onnx', lambda *a, **k: onnx.ModelProto())
    monkeypatch.setattr(export, 'onnx_session', lambda data: None)
    monkeypatch.setattr(export, 'compare', lambda *a, **k: [export.Check((11, 13), 0.5, 2.0)])
    code, _, err = run_cli(['--model', esrt_checkpoint, '--out', str(out)])
    assert code == 1
    line = error_line(err)
    assert 'not written' in line and '11x13' in line, err
    assert out.read_bytes() == b'previous export'
    assert sorted(os.listdir(tmp_path)) == ['model.onnx']


def test_an_exporter_failure_is_one_line(esrt_checkpoint, tmp_path, monkeypatch):
    def failing_export(*args, **kwargs):
        raise RuntimeError('unsupported operator aten::something\nlong traceback ...')

    monkeypatch.setattr(torch.export, 'export', failing_export)
    code, _, err = run_cli(['--model', esrt_checkpoint, '--out', str(tmp_path / 'm.onnx')])
    assert code == 1
    assert error_line(err).endswith('the ONNX exporter failed: RuntimeError: unsupported operator aten::something')
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- safetensors

@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_safetensors_export_keeps_weights_and_network_kwargs(family, tmp_path):
    case = golden_cases(family)[0]
    checkpoint, out = str(tmp_path / f'{case}.pth'), str(tmp_path / f'{case}.safetensors')
    golden = write_golden_checkpoint(case, checkpoint)
    code, stdout, err = run_cli(['--model', checkpoint, '--out', out])
    assert code == 0, err
    assert 'identical weights' in stdout
    stored = load_checkpoint(out)
    spec = family_spec(family)
    full = spec.full_kwargs(golden['kwargs'])
    assert stored[NETWORK_KWARGS_KEY] == {name: full[name] for name in spec.checkpoint.stored_kwargs}
    for name, value in golden['state_dict'].items():
        assert torch.equal(stored['params'][name], value), name
    model = infer.load_model(out)
    with torch.no_grad():
        out_tensor = model.net(golden['input'])
    assert_close(out_tensor, golden['output'], f'{case} from .safetensors')


def test_stored_kwargs_survive_safetensors_where_the_official_convention_differs(tmp_path):
    """LabNet: ours store residual_antialias=True; a file without it is read as an official release (False)."""
    checkpoint, out = str(tmp_path / 'labnet.pth'), str(tmp_path / 'labnet.safetensors')
    write_golden_checkpoint('labnet_nf16_x4', checkpoint)
    assert run_cli(['--model', checkpoint, '--out', out])[0] == 0
    assert infer.load_model(out).net.residual_antialias is True
    assert run_cli(['--model', checkpoint, '--out', out, '--arch-option', 'residual_antialias=false'])[0] == 0
    assert infer.load_model(out).net.residual_antialias is False


def test_fp16_safetensors_halves_the_floating_weights(esrt_checkpoint, tmp_path):
    out = str(tmp_path / 'esrt_fp16.safetensors')
    code, _, err = run_cli(['--model', esrt_checkpoint, '--out', out, '--fp16'])
    assert code == 0, err
    tensors = load_checkpoint(out)['params']
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    assert os.path.getsize(out) < 0.6 * os.path.getsize(esrt_checkpoint)


def test_the_onnx_optimizer_skips_only_its_quadratic_rules_and_gets_them_back():
    from onnxscript import rewriter

    def single_output(rule) -> bool:
        return rule._target_pattern.has_single_output_node

    before = rewriter._DEFAULT_REWRITE_RULES
    with export.linear_time_onnx_rewrites():
        during = rewriter._DEFAULT_REWRITE_RULES
    assert rewriter._DEFAULT_REWRITE_RULES is before
    assert list(during) == [rule for rule in before if single_output(rule)]
    assert len(during) < len(before)  # SlicesSplit in onnxscript 0.7
