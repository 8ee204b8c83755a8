"""benchmarks/attention_ceiling.py: the attention kernel's share of a forward and the ceiling it puts on the
network's % of GEMM peak (no timing asserts: only what holds on any machine)."""
from __future__ import annotations

from helpers import load_benchmark


def test_windowed_attention_lowers_the_ceiling_and_a_network_without_attention_has_none(capsys):
    argv = ['--variants', 'GRFormer-light,LabNet', '--tiny', '--size', '16', '--threads', '1', '--repeats', '1']
    ceilings = load_benchmark('attention_ceiling').main(argv)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| GRFormer-light') or line.startswith('| LabNet')]
    assert len(rows) == 2, out
    assert 0 < ceilings['GRFormer-light'] < 1  # its attention runs below the GEMM peak
    assert ceilings['LabNet'] == 1.0  # no attention calls: nothing bounds it below the peak
    assert rows[1].split('|')[3].strip() == '0.00'  # LabNet's attention GFLOP
