"""Multiply-accumulates of a network forward: what the network computes, whatever kernel runs it.

``torch.utils.flop_counter.FlopCounterMode`` counts matrix products, convolutions and some fused
attention kernels by the shapes of the aten ops it sees. Run naively on a CPU it misses work:
the fused CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no formula, and
the kernels this package picks for speed (``TokenLinear`` as a 1x1 convolution, padded ESRT heads,
grouped linears) change which ops run. The count here is robust to both:

* the forward runs under ``layers.plain_formulation()``: stock ``nn.Linear`` / ``nn.Conv2d`` and
  ``softmax(q @ k^T) @ v`` attention, i.e. the official formulation of every network;
* on a copy of the network on the ``meta`` device (``network_macs``): shapes only, so counting costs
  neither compute nor activation memory (ESRT's plain attention at 256x256 would need ~16 GB); if an op
  has no meta kernel, the count falls back to the real device;
* the attention kernels torch has no formula for (CPU flash, MPS, out-of-tree backends) get one
  (``ATTENTION_FLOP_FORMULAS``), so a network that calls SDPA directly is counted too;
* ops that look like compute (convolution / matmul / attention / linear in the name) but have no
  formula are reported in ``MacCount.uncounted`` instead of being silently skipped.

MACs = FLOPs / 2; element-wise ops, norms, softmax and resizes are not counted (the papers' convention).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

#: an op name (leading underscores stripped) that suggests multiply-accumulate work; such an op without a
#: flop formula is reported. Word parts only: conv2d, mkldnn_convolution, bmm, addmm, _scaled_mm, mkldnn_linear,
#: but not cummax or upsample_bilinear2d
_COMPUTE_OP = re.compile(r'(^|_)conv(olution|\d|_|$)|attention|matmul|einsum|(^|_)linear|(^|_)[a-z]*mm(_|$)')


def attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    """FLOPs of softmax attention on (..., Nq, D) queries, (..., Nk, D) keys, (..., Nk, Dv) values.

    ``q @ k^T`` and ``scores @ v``: 2 * batch * Nq * Nk * (D + Dv), the batch dims broadcast (any rank,
    grouped-query heads included).
    """
    batch = torch.Size(torch.broadcast_shapes(tuple(query_shape[:-2]), tuple(key_shape[:-2]),
                                              tuple(value_shape[:-2]))).numel()
    queries, depth = query_shape[-2], query_shape[-1]
    keys, value_depth = key_shape[-2], value_shape[-1]
    return 2 * batch * queries * keys * (depth + value_depth)


def _attention_ops() -> list[Any]:
    names = ('_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_attention_math_for_mps',
             '_scaled_dot_product_fused_attention_overrideable')
    return [getattr(torch.ops.aten, name) for name in names if hasattr(torch.ops.aten, name)]


#: flop formulas for attention kernels that ``torch.utils.flop_counter`` does not know (q, k, v come first)
ATTENTION_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {op: attention_flops for op in _attention_ops()}


@dataclass
class MacCount:
    """Result of one count: total MACs, MACs per aten op, and compute-like ops that had no formula."""

    total: float
    per_op: dict[str, float] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)
    device: str = 'meta'


class _OpRecorder(TorchDispatchMode):
    """Names of the aten op packets that run inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.packets.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MacCount:
    """MACs of ``fn(*args, **kwargs)`` under ``plain_formulation()``, without gradients, on the args' device."""
    from torch.utils.flop_counter import FlopCounterMode

    from sr_arch.archs.layers import plain_formulation

    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)
    recorder = _OpRecorder()
    with torch.no_grad(), plain_formulation(), counter, recorder:
        fn(*args, **kwargs)
    counted = set(counter.flop_registry)
    uncounted = sorted(str(p) for p in recorder.packets
                       if p not in counted and _COMPUTE_OP.search(str(p).split('.')[-1].lstrip('_')))
    per_op = {str(op): flops / 2 for op, flops in counter.get_flop_counts().get('Global', {}).items()}
    device = next((a.device.type for a in args if isinstance(a, Tensor)), 'cpu')
    return MacCount(counter.get_total_flops() / 2, per_op, uncounted, device)


def network_macs(net: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 run: Callable[[nn.Module, Tensor], Tensor] | None = None) -> MacCount:
    """MACs of ``run(net, x)`` (default ``net(x)``: the networks pad any size themselves) for an input of
    ``input_shape``, counted on a meta-device copy of ``net``.

    ``net`` itself is not touched (a network already on the meta device is used as it is). Meta kernels
    run in Python, so this takes seconds whatever the input size (LabNet x4: about 8 s on one thread).
    When the meta copy cannot run (an op without a meta kernel, a value-dependent branch), the count runs
    ``net`` on its own device (still the plain formulation).
    """
    run = run or (lambda module, x: module(x))
    try:
        tensors = [*net.parameters(), *net.buffers()]
        on_meta = bool(tensors) and all(t.is_meta for t in tensors)
        meta_net = net if on_meta else copy.deepcopy(net).to('meta')
        return count_macs(run, meta_net, torch.empty(input_shape, device='meta', dtype=dtype))
    except (NotImplementedError, RuntimeError):
        pass
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device('cpu')
    return count_macs(run, net, torch.rand(input_shape, device=device, dtype=dtype))
