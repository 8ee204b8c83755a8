"""spandrel (chaiNNer, ComfyUI) loads every family's checkpoints after ``sr_arch.spandrel.install()``: ours for the
families spandrel does not ship, spandrel's own for HAT and RGT; outputs equal the golden vectors."""
from __future__ import annotations

import pytest
import spandrel
import torch

from helpers import golden_cases, load_golden, write_golden_checkpoint
from sr_arch import export
from sr_arch.archs import FAMILIES, family_spec
from sr_arch.spandrel import FamilyArchitecture, detect_family, install

GOLDEN_CASES = sorted(case for family in FAMILIES for case in golden_cases(family))
#: families spandrel 0.4.2 ships itself (before install)
NATIVE = {support.architecture.id for support in spandrel.MAIN_REGISTRY} & set(FAMILIES)


@pytest.fixture(scope='module', autouse=True)
def installed():
    install(ignore_duplicates=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    limit = 1e-4 * max(expected.abs().max().item(), 1.0)
    diff = (actual - expected).abs().max().item()
    assert actual.shape == expected.shape and diff <= limit, f'{what}: max abs diff {diff:.3g} > {limit:.3g}'


def test_install_adds_exactly_the_families_spandrel_lacks():
    assert NATIVE == {'HAT', 'RGT'}  # spandrel 0.4.2; if it gains more, they keep spandrel's own support
    ours = {s.architecture.id for s in spandrel.MAIN_REGISTRY if isinstance(s.architecture, FamilyArchitecture)}
    assert ours == set(FAMILIES) - NATIVE
    with pytest.raises(spandrel.DuplicateArchitectureError):
        install()
    assert install(ignore_duplicates=True) == []


@pytest.mark.parametrize('case', GOLDEN_CASES)
def test_spandrel_loads_our_checkpoint_and_reproduces_the_golden_output(case, tmp_path):
    path = str(tmp_path / f'{case}.pth')
    golden = write_golden_checkpoint(case, path)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    spec = family_spec(golden['family'])
    assert descriptor.architecture.id == spec.name
    assert isinstance(descriptor.architecture, FamilyArchitecture) == (spec.name not in NATIVE)
    assert descriptor.scale == golden['kwargs']['upscale']
    with torch.no_grad():
        assert_close(descriptor.model.eval()(golden['input']), golden['output'], f'{case} through spandrel')
    for index in range(golden['input'].shape[0]):  # spandrel's call: one image, clamped to [0, 1]
        sr = descriptor(golden['input'][index:index + 1])
        assert_close(sr, golden['output'][index:index + 1].clamp(0, 1), f'{case} image {index}, clamped')


@pytest.mark.parametrize('family', sorted(set(FAMILIES) - NATIVE))
def test_our_descriptors_carry_size_requirements_scale_and_variant(family, tmp_path):
    case = golden_cases(family)[0]
    path = str(tmp_path / f'{case}.pth')
    golden = write_golden_checkpoint(case, path)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    spec = family_spec(family)
    rules = spec.size_rules(golden['kwargs'])
    assert descriptor.size_requirements.multiple_of == rules.pad_multiple
    assert descriptor.size_requirements.minimum >= rules.min_size
    assert descriptor.purpose == 'SR' and descriptor.input_channels == descriptor.output_channels == 3
    detection = detect_family(spec, golden['state_dict'])
    expected_tag = detection.variant or detection.describe().rsplit(' x', 1)[0]
    assert descriptor.tags == [expected_tag]
    # an odd size: spandrel pads to the requirements, our network to its own multiple; the crop is the same size
    lr = golden['input'][:1, :, :-3, :-1]
    assert tuple(descriptor(lr).shape[-2:]) == (lr.shape[-2] * descriptor.scale, lr.shape[-1] * descriptor.scale)


@pytest.mark.parametrize('family', sorted(set(FAMILIES) - NATIVE))
def test_a_published_variant_is_tagged_with_its_name(family):
    spec = family_spec(family)
    variant = next(iter(spec.variants))
    net = spec.build(variant, spec.scales[0])
    descriptor = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
    assert descriptor.architecture.id == family and descriptor.tags == [variant]
    assert descriptor.scale == spec.scales[0]


@pytest.mark.parametrize('family', sorted(set(FAMILIES) - NATIVE))
def test_exported_safetensors_load_in_spandrel(family, tmp_path):
    case = golden_cases(family)[0]
    checkpoint, out = str(tmp_path / f'{case}.pth'), str(tmp_path / f'{case}.safetensors')
    golden = write_golden_checkpoint(case, checkpoint)
    assert export.main(['--model', checkpoint, '--out', out]) == 0
    descriptor = spandrel.ModelLoader().load_from_file(out)
    with torch.no_grad():
        assert_close(descriptor.model.eval()(golden['input']), golden['output'], f'{case} .safetensors')


def test_each_family_claims_only_its_own_checkpoints():
    """Our detectors say no to every other family's golden weights and to a spandrel architecture's."""
    for case in GOLDEN_CASES:
        golden = load_golden(case)
        for name, spec in FAMILIES.items():
            assert (detect_family(spec, golden['state_dict']) is not None) == (name == golden['family']), (case, name)
    from spandrel.architectures.Compact import Compact

    compact = Compact(num_feat=16, num_conv=2, upscale=2).state_dict()
    assert all(detect_family(spec, compact) is None for spec in FAMILIES.values())
    assert spandrel.ModelLoader().load_from_state_dict(compact).architecture.id == 'Compact'
