"""benchmarks/kernel_ceiling.py: the attention and depthwise-convolution kernels' share of a forward and the ceilings
they put on the network's % of GEMM peak (no timing asserts: only what holds on any machine)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import load_benchmark


def test_kernel_bound_calls_lower_the_ceilings_and_a_network_without_attention_has_none_from_it(capsys):
    argv = ['--variants', 'GRFormer-light,LabNet', '--tiny', '--size', '16', '--threads', '1', '--repeats', '1']
    ceilings = load_benchmark('kernel_ceiling').main(argv)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| GRFormer-light') or line.startswith('| LabNet')]
    assert len(rows) == 2, out
    assert 0 < ceilings['GRFormer-light']['attention'] < 1  # its attention runs below the GEMM peak
    assert ceilings['LabNet']['attention'] == 1.0  # no attention calls: nothing bounds it below the peak
    assert rows[1].split('|')[3].strip() == '0.00'  # LabNet's attention GFLOP
    for variant in ('GRFormer-light', 'LabNet'):  # both have depthwise convolutions, slower than the GEMM peak
        assert 0 < ceilings[variant]['attention+depthwise'] < ceilings[variant]['attention']


def test_depthwise_flops_match_torch_flop_counter():
    kernel_ceiling = load_benchmark('kernel_ceiling')
    conv = torch.nn.Conv2d(8, 8, 9, padding=8, dilation=2, groups=8)  # 'same' dilated, as LabNet's MLFR
    x = torch.rand(2, 8, 13, 11)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        conv(x)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        conv(x)
    events = [e for e in prof.events() if e.name == kernel_ceiling.CONVOLUTION_KERNEL]
    assert len(events) == 1
    assert kernel_ceiling._depthwise_gflop(events[0]) * 1e9 == counter.get_total_flops()
    dense = torch.nn.Conv2d(8, 4, 3, padding=1)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        dense(torch.rand(1, 8, 64, 64))  # over 20480 input elements: oneDNN even at batch 1
    events = [e for e in prof.events() if e.name == kernel_ceiling.CONVOLUTION_KERNEL]
    assert len(events) == 1 and kernel_ceiling._depthwise_gflop(events[0]) is None
