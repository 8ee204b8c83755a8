"""Checkpoint detection: family, variant, scale and constructor kwargs from state_dict shapes."""
import pytest
import torch
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.utils.registry import ARCH_REGISTRY

from helpers import golden_cases, load_golden, load_manifests
from sr_arch.utils.detect import DetectionError, detect_architecture

MANIFESTS = load_manifests()


def manifest_state_dict(entry: dict) -> dict[str, torch.Tensor]:
    """The manifest's names and shapes as meta tensors (no memory), like a real checkpoint's keys."""
    return {name: torch.empty(shape, dtype=getattr(torch, dtype.split('.')[-1]), device='meta')
            for name, (shape, dtype) in entry['state_dict'].items()}


def normalised(value):
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    return value


@pytest.mark.parametrize('name', sorted(MANIFESTS))
def test_every_published_variant_is_recognised_from_its_shapes(name):
    entry = MANIFESTS[name]
    detection = detect_architecture(manifest_state_dict(entry), name, verify=False)
    assert (detection.family, detection.describe()) == (entry['family'], name)
    for key, value in entry['kwargs'].items():  # the official constructor arguments, all of them
        assert normalised(detection.kwargs[key]) == normalised(value), key


@pytest.mark.parametrize('name', ['HAT-S x2', 'RGT-S x3', 'GRFormer-light x4', 'ESRT x3', 'LabNet x2'])
def test_detected_kwargs_rebuild_exactly_the_manifest_names_and_shapes(name):
    detection = detect_architecture(manifest_state_dict(MANIFESTS[name]), name, verify=True)
    assert detection.describe() == name


@pytest.mark.parametrize('case', [c for family in ('hat', 'rgt', 'grformer', 'labnet') for c in golden_cases(family)])
def test_non_published_sizes_are_read_from_the_shapes(case):
    """Our own training outputs have other sizes: the golden vectors' tiny configurations stand in."""
    golden = load_golden(case)
    detection = detect_architecture(golden['state_dict'], case, verify=True)
    assert detection.family == golden['family'] and detection.variant is None
    for key, value in golden['kwargs'].items():
        if key == 'img_size' and golden['family'] in ('HAT', 'RGT'):
            continue  # in no shape: RGT ignores it (masks are always 64x64), HAT only checks it against the window
        assert normalised(detection.kwargs[key]) == normalised(value), key


def test_rgt_window_orientation_is_read_from_the_offsets_table():
    """(4, 8) and (8, 4) windows have the same shapes; the rpe_biases values tell them apart."""
    kwargs = dict(load_golden('rgt_tiny_x2')['kwargs'], split_size=[8, 4])
    net = ARCH_REGISTRY.get('RGT')(**kwargs)
    assert detect_architecture(net.state_dict(), 'rgt').kwargs['split_size'] == [8, 4]


def test_a_modified_network_gets_the_differing_keys():
    state = dict(load_golden('hat_tiny_x2')['state_dict'])
    del state['conv_last.bias']
    state['extra.weight'] = torch.zeros(3)
    state['conv_after_body.bias'] = torch.zeros(7)
    with pytest.raises(DetectionError) as error:
        detect_architecture(state, 'mine.pth')
    message = str(error.value)
    assert message.startswith('mine.pth: looks like HAT')
    assert '1 missing (conv_last.bias)' in message
    assert '1 unexpected (extra.weight)' in message
    assert '1 with other shapes (conv_after_body.bias: [24] vs [7])' in message
    assert '\n' not in message


def test_another_network_gets_the_closest_family_and_counts():
    state = MSRResNet(num_feat=16, num_block=2, upscale=4).state_dict()
    with pytest.raises(DetectionError) as error:
        detect_architecture(state, 'srresnet.pth')
    message = str(error.value)
    assert message.startswith('srresnet.pth: not a checkpoint of ESRT, GRFormer, HAT, LabNet, RGT; closest is ')
    assert ' missing (' in message and ' unexpected (' in message and '\n' not in message


def test_a_damaged_checkpoint_is_compared_at_the_scale_that_fits_best():
    state = {k: v for k, v in load_golden('esrt_x2')['state_dict'].items() if not k.startswith('head.')}
    with pytest.raises(DetectionError) as error:
        detect_architecture(state, 'esrt.pth')
    assert str(error.value).endswith('closest is ESRT (99% of key patterns shared; missing head.0.weight); '
                                     'compared with ESRT x2: 2 missing (head.0.weight, head.0.bias)')
