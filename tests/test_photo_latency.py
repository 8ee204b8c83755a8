"""benchmarks/photo_latency.py: real-photo inference, whole and --tile auto, ours and plain (no timing asserts)."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import load_benchmark

photo_latency = load_benchmark('photo_latency')


def test_photo_benchmark_rows_for_whole_auto_and_plain_through_the_same_tile(tmp_path):
    # with ESRT's quadratic band attention a 48 px tile may beat the whole 64 px image: then a fourth row runs
    records = photo_latency.main(['--variants', 'ESRT', '--scale', '2', '--size', '64', '--tile-pad', '8',
                                  '--threads', '1', '--in-process', '--out', str(tmp_path)])
    assert [(r['formulation'], r['tiling']) for r in records][:3] == [
        ('ours', 'auto'), ('ours', 'whole'), ('plain', 'whole')]
    auto = records[0]
    assert auto['decide_s'] > 0 and auto['whole_side'] == 64 and set(auto['predicted_s']) == {'48', '64'}
    for r in records:
        assert r['run_s'] > 0 and r['run_cpu_s'] > 0 and r['threads'] == 1
        assert r['peak_bytes'] is None  # in-process: only a fresh child process measures its peak
        assert r['regime'] == 'compute' and len(r['load_avg']) == 2
    for r in records[2:]:  # plain equals ours through the same tiling
        assert r['max_abs_diff_vs_ours'] < 1e-4
    assert len(records) == (4 if auto['tile_used'] < 64 else 3)
    if auto['tile_used'] < 64:
        assert records[3]['tiling'] == f"tile {auto['tile_used']} (ours auto)"
        assert records[3]['tile_used'] == auto['tile_used']
    data = json.loads((tmp_path / 'photo_latency.json').read_text())
    assert data['records'] == json.loads(json.dumps(records)) and data['machine']['torch'] == torch.__version__
    table = (tmp_path / 'photo_latency.md').read_text()
    assert '| ESRT | ours | auto |' in table and '| ESRT | plain | whole | whole | compute |' in table


def test_photo_benchmark_child_process_measures_one_configuration():
    request = dict(variant='GRFormer-light', scale=2, tiny=True, photo='coffee', size=40, tile_pad=8, threads=1,
                   formulation='plain', tile=24)
    result = photo_latency.run_child(request, 'compute')
    assert result['tile_used'] == 24 and result['run_s'] > 0 and result['peak_bytes'] > 0 and result['threads'] == 1


def test_photo_benchmark_rejects_bad_arguments(capsys):
    for argv, message in [(['--variants', 'HAT-XL'], "unknown variant 'HAT-XL'"),
                          (['--photo', 'nothing'], "--photo 'nothing' is not a scikit-image photo"),
                          (['--size', '4096'], 'smaller than --size 4096'), (['--regimes', 'fast'], "'fast'")]:
        with pytest.raises(SystemExit):
            photo_latency.parse_args(argv)
        assert message in capsys.readouterr().err
