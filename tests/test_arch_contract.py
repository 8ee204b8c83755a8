"""The contract every network family keeps, one parametrized test per rule over ``sr_arch.archs.FAMILIES``.

A new family is one arch file with its ``FAMILY`` record (and, if it has official test vectors, their files in
tests/golden/); every rule below then runs for it. Family test files keep only what is really family-specific.
Inputs are crops of real photos; sizes are chosen so that no persistent mask buffer (64x64 / img_size) and no
window multiple hides a padding or cache path.
"""
from __future__ import annotations

import copy
import io
import threading
import warnings

import numpy as np
import pytest
import torch

from helpers import GOLDEN_DIR, assert_matches_golden, golden_cases, load_golden, load_manifests, photo
from sr_arch.archs import FAMILIES, family_spec
from sr_arch.archs.layers import plain_formulation
from sr_arch.archs.spec import published_name
from sr_arch.utils.detect import detect_architecture, state_dict_shapes

FAMILY_NAMES = sorted(FAMILIES)
GOLDEN_CASES = sorted(case for family in FAMILY_NAMES for case in golden_cases(family))
MANIFESTS = load_manifests()
CHECKPOINTING = [name for name in FAMILY_NAMES if FAMILIES[name].checkpointing_arg]


def tiny_kwargs(family: str, scale: int = 2, **overrides) -> dict:
    return {**FAMILIES[family].tiny, 'upscale': scale, **overrides}


def build(family: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A tiny network of ``family`` (``kwargs`` override the tiny configuration), random weights from ``seed``.

    Every parameter is perturbed so that zero-initialised ones (layer scales, LabNet's beta) take part too.
    """
    torch.manual_seed(seed)
    net = FAMILIES[family].cls(**tiny_kwargs(family, **kwargs))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net.eval()


def fresh_copy(net: torch.nn.Module, family: str, **kwargs) -> torch.nn.Module:
    """A newly built network with ``net``'s current values (no cache of ``net`` can reach it)."""
    copy_ = FAMILIES[family].cls(**tiny_kwargs(family, **kwargs))
    copy_.load_state_dict(copy.deepcopy(net.state_dict()))
    return copy_.eval()


def photo_batch(height: int, width: int, names: tuple[str, ...] = ('astronaut',)) -> torch.Tensor:
    """(len(names), 3, height, width) crops of real photos in [0, 1]."""
    crops = [photo(name, max(height, width))[:height, :width] for name in names]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def _as_lists(value):
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def eval_forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Equal within ``rtol`` x max |expected| (the issue's tolerance for outputs of different code paths)."""
    assert actual.shape == expected.shape, what
    if not expected.numel():
        return
    diff = (actual - expected).abs().max().item()
    limit = rtol * max(expected.abs().max().item(), 1.0)
    assert diff <= limit, f'{what}: max abs diff {diff:.3g} > {limit:.3g}'


# ---------------------------------------------------------------------------------------------- official code

@pytest.mark.parametrize('backend', ['sdpa', 'plain'])
@pytest.mark.parametrize('case', GOLDEN_CASES)
def test_golden_output_of_the_official_code(case, backend):
    assert_matches_golden(family_spec(load_golden(case)['family']).cls, case, backend)


def test_every_family_has_golden_vectors_and_published_variants_in_the_manifests():
    families_with_goldens = {load_golden(case)['family'] for case in GOLDEN_CASES}
    assert families_with_goldens == set(FAMILIES), f'golden vectors in {GOLDEN_DIR}'
    expected = {published_name(variant, scale): name
                for name, spec in FAMILIES.items() for variant in spec.variants for scale in spec.scales}
    assert {name: entry['family'] for name, entry in MANIFESTS.items()} == expected


@pytest.mark.parametrize('name', sorted(MANIFESTS))
def test_published_variant_has_the_official_kwargs_names_shapes_and_dtypes(name):
    entry = MANIFESTS[name]
    spec = FAMILIES[entry['family']]
    variant, scale = name.rsplit(' x', 1)
    kwargs = spec.variant_kwargs(variant, int(scale))
    # the official constructor arguments; ours may spell out a default the official file leaves out
    assert _as_lists(spec.full_kwargs(kwargs)) == _as_lists(spec.full_kwargs(entry['kwargs']))
    with torch.device('meta'):
        net = spec.build(variant, int(scale))
    state = net.state_dict()
    assert {k: [list(v.shape), str(v.dtype)] for k, v in state.items()} == entry['state_dict']
    assert list(state) == list(entry['state_dict'])  # the official order too
    assert sum(p.numel() for p in net.parameters()) == entry['params']


# ---------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize('family', FAMILY_NAMES)
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_detection_round_trip_of_a_non_published_configuration(family, scale):
    spec = FAMILIES[family]
    kwargs = tiny_kwargs(family, scale)
    published = [variant for variant in spec.variants
                 if spec.full_kwargs(spec.variant_kwargs(variant, scale)) == spec.full_kwargs(kwargs)]
    net = build(family, upscale=scale)
    detection = detect_architecture(net.state_dict(), 'tiny.pth', verify=True)
    assert (detection.family, detection.variant, detection.scale) == (family, next(iter(published), None), scale)
    for key in set(kwargs) & set(detection.kwargs):
        assert _as_lists(detection.kwargs[key]) == _as_lists(kwargs[key]), key
    rebuilt = FAMILIES[family].cls(**detection.kwargs)
    assert state_dict_shapes(rebuilt.state_dict()) == state_dict_shapes(net.state_dict())


# ---------------------------------------------------------------------------------------------- caches

@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_ema_style_data_update_then_eval_equals_a_fresh_copy(family):
    """basicsr's model_ema writes ``p.data.mul_().add_()``, which leaves no version trace on the parameter."""
    net, other = build(family, seed=0), build(family, seed=1)
    x = photo_batch(20, 36)
    eval_forward(net, x)  # fills every cache
    eval_forward(net, photo_batch(24, 40))
    with torch.no_grad():
        for p, q in zip(net.parameters(), other.parameters()):
            p.data.mul_(0.5).add_(q.data, alpha=0.5)
    assert_close(eval_forward(net, x), eval_forward(fresh_copy(net, family), x), 'after the EMA update')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_load_state_dict_to_and_train_steps_invalidate_the_caches(family):
    net, other = build(family, seed=0), build(family, seed=1)
    x = photo_batch(20, 36)
    eval_forward(net, x)
    net.load_state_dict(other.state_dict())
    assert_close(eval_forward(net, x), eval_forward(other, x), 'after load_state_dict')

    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).mean().backward()
    optimizer.step()
    net.eval()
    assert_close(eval_forward(net, x), eval_forward(fresh_copy(net, family), x), 'after a training step')

    net.double()
    reference = fresh_copy(net, family).double()
    out = eval_forward(net, x.double())
    assert out.dtype == torch.float64
    assert_close(out, eval_forward(reference, x.double()), 'after .double()')
    net.float()
    assert_close(eval_forward(net, x), eval_forward(fresh_copy(net, family), x), 'after .double().float()')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_the_lean_paths_equal_the_plain_formulation_and_caches_hit(family):
    net = build(family)
    x = photo_batch(20, 36)
    first, second = eval_forward(net, x), eval_forward(net, x)
    with plain_formulation():
        plain = eval_forward(net, x)
    assert torch.equal(first, second)
    assert_close(first, plain, 'lean vs plain formulation')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_threads_sharing_an_eval_network_get_their_own_results(family):
    net = build(family)
    inputs = [photo_batch(20, 36, ('astronaut',)), photo_batch(24, 32, ('coffee',)), photo_batch(20, 36, ('rocket',))]
    expected = [eval_forward(fresh_copy(net, family), x) for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        for _ in range(2):
            results[index] = eval_forward(net, inputs[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for index, reference in enumerate(expected):
        assert_close(results[index], reference, f'thread {index}')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_eval_mode_with_autograd_gets_the_gradients_of_a_network_without_caches(family):
    """Kept biases must never cut the graph: in eval mode with gradients on, nothing is taken from a cache."""
    x = photo_batch(20, 36)
    grads = []
    for fill_caches_first in (False, True):
        net = build(family)
        if fill_caches_first:
            eval_forward(net, x)
        net(x).square().mean().backward()
        grads.append({name: p.grad for name, p in net.named_parameters() if p.grad is not None})
    assert grads[1].keys() == grads[0].keys() and grads[0]
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name)


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_caches_filled_under_inference_mode_serve_autograd_and_frozen_weights(family):
    net = build(family)
    x = photo_batch(20, 36)
    with torch.inference_mode():
        expected = net(x)
    net.requires_grad_(False)  # frozen weights (e.g. a perceptual or teacher network): caches may be used
    x.requires_grad_(True)
    out = net(x)
    out.sum().backward()
    assert_close(out.detach(), expected, 'frozen network with input gradients')
    assert x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- tracing

def _attempt(fn) -> None:
    """Run an export / trace; whether it succeeds is not this contract's concern, only what it leaves behind."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            fn()
    except Exception:  # noqa: BLE001
        pass


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_torch_export_and_jit_trace_leave_the_module_correct(family):
    net = build(family)
    old, new = photo_batch(20, 36), photo_batch(28, 44)
    eval_forward(net, old)  # caches filled before the export
    with torch.no_grad():
        _attempt(lambda: torch.export.export(net, (new,)))
        _attempt(lambda: torch.jit.trace(net, (new,), check_trace=False))
    reference = fresh_copy(net, family)
    for x in (new, old):
        out = eval_forward(net, x)
        assert not isinstance(out, torch._subclasses.FakeTensor)
        assert_close(out, eval_forward(reference, x), f'eager forward at {tuple(x.shape[-2:])} after the exports')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_torch_export_of_an_eval_network_runs_and_equals_eager(family):
    net = build(family)
    x = photo_batch(20, 36)
    with torch.no_grad():
        program = torch.export.export(net, (x,))
        exported = program.module()(x)
    assert_close(exported, eval_forward(fresh_copy(net, family), x), 'exported program')


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_torch_compile_equals_eager_and_leaves_the_module_correct(family):
    net = build(family)
    x = photo_batch(20, 36)
    eager = eval_forward(net, x)
    compiled = torch.compile(net, backend='aot_eager', dynamic=False)
    with torch.no_grad():
        out = compiled(x)
    assert_close(out, eager, 'compiled forward')
    assert_close(eval_forward(net, photo_batch(24, 40)), eval_forward(fresh_copy(net, family), photo_batch(24, 40)),
                 'eager forward after compiling')
    torch._dynamo.reset()


def test_onnx_tracing_export_leaves_the_module_correct():
    family = 'GRFormer'
    net = build(family)
    x = photo_batch(20, 36)
    eval_forward(net, x)
    _attempt(lambda: torch.onnx.export(net, (photo_batch(28, 44),), io.BytesIO(), dynamo=False))
    assert_close(eval_forward(net, x), eval_forward(fresh_copy(net, family), x), 'after an ONNX export')


# ---------------------------------------------------------------------------------------------- inputs

@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_a_batch_equals_its_images_one_at_a_time(family):
    net = build(family)
    batch = photo_batch(20, 36, ('astronaut', 'coffee', 'rocket'))
    together = eval_forward(net, batch)
    for index in range(len(batch)):
        assert_close(together[index:index + 1], eval_forward(net, batch[index:index + 1]), f'image {index}')


@pytest.mark.parametrize('family', FAMILY_NAMES)
@pytest.mark.parametrize('height, width', [(1, 1), (1, 9), (5, 3), (13, 21), (17, 16), (33, 30)])
def test_any_input_size_gives_scale_times_the_size(family, height, width):
    net = build(family, upscale=3)
    out = eval_forward(net, photo_batch(height, width))
    assert out.shape == (1, 3, 3 * height, 3 * width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('family', CHECKPOINTING)
def test_gradient_checkpointing_gives_the_plain_gradients(family):
    """Same gradients, with blocks really recomputed in backward and drop-path masks replayed."""
    arg = FAMILIES[family].checkpointing_arg
    x = photo_batch(20, 36)
    grads, calls = [], []
    for use in (False, True):
        net = build(family, **{arg: use, 'drop_path_rate': 0.2}).train()
        count = [0]
        for module in net.modules():
            module.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(3)
        net(x).square().mean().backward()
        calls.append(count[0])
        grads.append({name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None})
    assert calls[1] > calls[0], 'no module ran again in backward: checkpointing is off'
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], name, rtol=1e-4)


@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_bad_arguments_give_a_one_line_error_naming_the_argument(family):
    with pytest.raises((TypeError, ValueError)) as error:
        FAMILIES[family].cls(**tiny_kwargs(family), window_sise=8)
    message = str(error.value)
    assert 'window_sise' in message and family in message and '\n' not in message
