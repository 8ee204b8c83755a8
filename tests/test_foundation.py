import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT
from sr_arch.archs import layers
from sr_arch.utils.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint


def test_functional_tensor_alias_lets_basicsr_degradations_import():
    from basicsr.data import degradations

    assert callable(degradations.rgb_to_grayscale)


def test_relative_position_index_matches_swin():
    from basicsr.archs.swinir_arch import WindowAttention

    ref = WindowAttention(8, (4, 4), 2).relative_position_index
    assert torch.equal(layers.relative_position_index((4, 4)), ref)


def test_shifted_window_mask_matches_swin():
    from basicsr.archs.swinir_arch import SwinTransformerBlock

    block = SwinTransformerBlock(8, (16, 16), 2, window_size=4, shift_size=2)
    assert torch.equal(layers.shifted_window_mask(16, 16, (4, 4), (2, 2)), block.calculate_mask((16, 16)))


def test_attention_backends_agree():
    q, k, v = torch.randn(2, 3, 16, 8), torch.randn(2, 3, 20, 8), torch.randn(2, 3, 20, 5)
    bias = torch.randn(3, 16, 20)
    fused = layers.attention(q, k, v, 0.3, bias)
    with layers.attention_backend('plain'):
        plain = layers.attention(q, k, v, 0.3, bias)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_window_partition_roundtrip():
    x = torch.randn(2, 16, 32, 5)
    windows = layers.window_partition(x, (8, 16))
    assert windows.shape == (2 * 2 * 2, 8, 16, 5)
    assert torch.equal(layers.window_reverse(windows, (8, 16), 16, 32), x)


def test_pad_to_multiple_keeps_content_even_for_one_pixel_inputs():
    for h, w in [(1, 1), (1, 5), (5, 7), (16, 16), (17, 33)]:
        x = torch.rand(1, 3, h, w)
        padded, (ph, pw) = layers.pad_to_multiple(x, 16)
        assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
        assert (ph, pw) == (padded.shape[-2] - h, padded.shape[-1] - w)
        assert torch.equal(padded[..., :h, :w], x)


def test_checkpoint_layouts_and_atomic_save(tmp_path):
    weights = {'conv.weight': torch.randn(2, 2), 'conv.bias': torch.randn(2)}
    for layout in ({'params_ema': weights, 'params': {}}, {'params': weights},
                   {f'module.{k}': v for k, v in weights.items()}, weights):
        path = str(tmp_path / 'ckpt.pth')
        atomic_save(layout, path)
        state = extract_state_dict(load_checkpoint(path))
        assert set(state) == set(weights)
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth']  # no temporary file left


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'params': Evil()}, f)
    try:
        load_checkpoint(str(path))
    except CheckpointError as err:
        assert 'evil.pth' in str(err) and 'refused' in str(err)
    else:
        raise AssertionError('malicious checkpoint was loaded')


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, '-m', 'sr_arch', '--help'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for command in ('train', 'test', 'infer', 'prepare', 'profile', 'demo'):
        assert command in out.stdout


def test_every_atomic_write_leaves_a_complete_file_with_umask_permissions(tmp_path):
    from sr_arch.utils.files import atomic_write, atomic_write_text

    previous = os.umask(0o022)
    try:
        path = str(tmp_path / 'out' / 'summary.md')
        atomic_write_text(path, 'first')
        assert open(path).read() == 'first' and os.stat(path).st_mode & 0o777 == 0o644  # not mkstemp's 0600

        def failing(f):
            f.write(b'half')
            raise OSError('disk full')

        with pytest.raises(OSError, match='disk full'):
            atomic_write(path, failing)
        assert open(path).read() == 'first' and os.listdir(tmp_path / 'out') == ['summary.md']  # no temp file left
    finally:
        os.umask(previous)
