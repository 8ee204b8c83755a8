"""benchmarks/speed.py and the plain-formulation switch (no timing assertions: the machine is shared)."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import load_benchmark
from sr_arch.archs import layers
from sr_arch.archs.layers import get_attention_backend, lean_paths_enabled, plain_formulation
from sr_arch.utils.macs import network_macs

#: tiny variant -> input (H, W): not the img_size of any persistent mask, not a multiple of the windows
#: except for HAT, which only accepts multiples of its window (its model pads)
FAMILY_INPUTS = {'HAT-S': (24, 40), 'RGT-S': (20, 28), 'GRFormer-light': (20, 28), 'ESRT': (20, 28),
                 'LabNet': (20, 28)}


speed = load_benchmark('speed')


def test_plain_formulation_switches_backend_and_caches_and_restores_them():
    assert get_attention_backend() == 'sdpa' and lean_paths_enabled()
    with pytest.raises(RuntimeError, match='inside'):
        with plain_formulation():
            assert get_attention_backend() == 'plain' and not lean_paths_enabled()
            raise RuntimeError('inside')
    assert get_attention_backend() == 'sdpa' and lean_paths_enabled()
    assert layers.context._lean_paths_enabled is True


@pytest.mark.parametrize('variant', sorted(FAMILY_INPUTS))
def test_plain_formulation_gives_the_same_output(variant):
    net = speed.build_network(variant, scale=2, tiny=True).eval()
    h, w = FAMILY_INPUTS[variant]
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        ours_first = net(x)
        ours_cached = net(x)
        with plain_formulation():
            plain = net(x)
    assert ours_first.shape == (1, 3, 2 * h, 2 * w)
    assert torch.equal(ours_first, ours_cached)
    assert (ours_first - plain).abs().max().item() < 1e-5


def test_plain_formulation_rebuilds_grformer_masks_and_bias():
    net = speed.build_network('GRFormer-light', scale=2, tiny=True).eval()
    block = next(m for m in net.modules() if type(m).__name__ == 'GRSAB' and m.shifted)
    with torch.no_grad(), plain_formulation():
        net(torch.rand(1, 3, 16, 32))
    assert block.shift_masks.masks == {} and block.window_plans.plans == {} and block.attn.bias_cache._entry is None
    with torch.no_grad():  # the lean eval path: a window plan instead of a shift mask
        net(torch.rand(1, 3, 16, 32))
    assert block.shift_masks.masks == {} and len(block.window_plans.plans) == 2  # unshifted and shifted blocks
    assert block.attn.bias_cache._entry is not None
    with torch.enable_grad():  # the masked formulation
        net(torch.rand(1, 3, 16, 32))
    assert len(block.shift_masks.masks) == 1


def test_benchmark_writes_json_and_markdown_for_both_regimes(tmp_path):
    out = tmp_path / 'bench'
    records = speed.main(['--variants', 'GRFormer-light', '--tiny', '--sizes', '16', '--no-memory',
                          '--modes', 'eval', '--devices', 'cpu', '--regimes', 'default,compute',
                          '--repeats', '2', '--warmup', '1', '--threads', '1', '--out', str(out)])
    data = json.loads((out / 'speed.json').read_text())
    assert data['records'] == json.loads(json.dumps(records))
    assert [(r['variant'], r['size'], r['mode'], r['device'], r['dtype'], r['regime']) for r in records] == [
        ('GRFormer-light', 16, 'eval', 'cpu', 'fp32', regime) for regime in ('default', 'compute')]
    flops = 2 * network_macs(speed.build_network('GRFormer-light', 4, tiny=True), (1, 3, 16, 16)).total / 1e9
    for r in records:
        # the compute regime's child ran with the pinned allocator, the default one without
        assert r['allocator_pinned'] == (r['regime'] == 'compute')
        assert len(r['ours_all_s']) == len(r['plain_all_s']) == len(r['ours_cpu_all_s']) == 2
        assert len(r['gemm_all_gflops']) == 2
        assert r['ours_s'] > 0 and r['plain_s'] > 0 and r['ours_cpu_s'] > 0 and r['plain_cpu_s'] > 0
        assert r['gemm_peak_gflops'] == max(r['gemm_all_gflops']) > 0 and r['threads'] == 1
        assert len(r['load_avg']) == 2
        assert r['max_abs_diff'] < 1e-5
        assert r['gflop'] == pytest.approx(flops)
        assert r['ours_pct_peak'] == pytest.approx(100 * flops / r['ours_s'] / r['gemm_peak_gflops'])
        assert r['plain_pct_peak'] == pytest.approx(100 * flops / r['plain_s'] / r['gemm_peak_gflops'])
    assert data['machine']['torch'] == torch.__version__
    table = (out / 'speed.md').read_text()
    assert '| ours % of GEMM peak | plain % of GEMM peak |' in table
    for regime in ('default', 'compute'):
        assert f'| GRFormer-light (tiny) | 4 | 16 | eval | cpu | fp32 | {regime} |' in table


def test_benchmark_train_rows_and_peak_memory_once_per_configuration(tmp_path):
    records = speed.main(['--variants', 'GRFormer-light', '--tiny', '--sizes', '16', '--memory-sizes', '16',
                          '--modes', 'train', '--devices', 'cpu', '--regimes', 'compute', '--repeats', '1',
                          '--threads', '1', '--out', str(tmp_path)])
    assert [(r['mode'], r['regime']) for r in records] == [('train', 'compute')]
    r = records[0]
    assert r['ours_s'] > 0 and r['plain_s'] > 0 and r['max_abs_diff'] < 1e-5
    assert 'gflop' not in r and 'ours_pct_peak' not in r  # a train pass is not one forward: no FLOP column
    assert r['ours_peak_bytes'] > 0 and r['plain_peak_bytes'] > 0


def test_child_environment_pins_the_allocator_only_in_the_compute_regime(monkeypatch):
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=1')
    assert 'GLIBC_TUNABLES' not in speed.child_environment('default')
    assert speed.child_environment('compute')['GLIBC_TUNABLES'] == speed.PINNED_ALLOCATOR
    with pytest.raises(ValueError, match='regime must be one of'):
        speed.child_environment('fast')


def test_cuda_configurations_are_kept_and_skipped_only_without_a_gpu():
    args = speed.parse_args(['--variants', 'ESRT', '--devices', 'cpu,cuda', '--dtypes', 'fp32,bf16', '--no-memory',
                             '--modes', 'eval', '--regimes', 'default,compute'])
    configs = [(c['device'], c['dtype'], c['regime']) for c, _, _ in speed.configurations(args)]
    cuda = [('cuda', dtype, 'default') for dtype in ('fp32', 'bf16')] if torch.cuda.is_available() else []
    # CPU runs fp32 in both regimes; CUDA (when present) fp32 and bf16, where the host allocator plays no part
    assert configs == [('cpu', 'fp32', 'default'), ('cpu', 'fp32', 'compute')] + cuda


def test_gemm_peak_and_peak_fractions():
    assert speed.gemm_gflops(torch.device('cpu'), torch.float32, side=64, runs=2) > 0
    record = speed.add_peak_fractions({'gflop': 10.0, 'gemm_peak_gflops': 200.0, 'ours_s': 0.1, 'plain_s': 0.2})
    assert record['ours_pct_peak'] == pytest.approx(50.0) and record['plain_pct_peak'] == pytest.approx(25.0)
    assert 'ours_pct_peak' not in speed.add_peak_fractions({'ours_s': 0.1})


def test_benchmark_rejects_unknown_names():
    with pytest.raises(SystemExit):
        speed.parse_args(['--variants', 'HAT-XL'])
    with pytest.raises(KeyError, match="unknown variant 'SwinIR'"):
        speed.build_network('SwinIR', 4)
    with pytest.raises(ValueError, match="formulation must be one of"):
        speed.formulation_context('fast')
    with pytest.raises(SystemExit):
        speed.parse_args(['--regimes', 'pinned'])


def test_compile_benchmark_reports_compile_time_and_both_latencies():
    module = load_benchmark('compile_eval')
    (record,) = module.main(['--variants', 'GRFormer-light', '--tiny', '--size', '16', '--backend', 'aot_eager',
                             '--repeats', '1', '--threads', '1'])
    assert record['compile_s'] > 0 and record['eager_s'] > 0 and record['compiled_s'] > 0
    assert record['max_abs_diff'] < 1e-5
