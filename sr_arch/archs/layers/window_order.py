"""Shifted-window attention without masks: a plan that turns roll + window partition into one row gather and
the masked windows into the unmasked sub-windows they really are.

A Swin-style shift mask only separates the regions of a window that came from different sides of the roll's
seam (``-inf``-like fill, so their mutual attention weights are exactly zero in float32). Attention inside a
shifted window is therefore plain attention inside each of its regions, and because a relative position bias
depends only on offsets, every region of the same shape has the same bias: the bias of that rectangle taken
from the window's bias. ``WindowPlan`` orders the tokens of a (B, H*W, C) map so that every attention unit (a
whole unmasked window, or one region of a cut window) is a contiguous run of tokens and units of one shape are
consecutive: each shape is then one attention call on views, with a broadcast bias and no mask at all. That
skips the masked score blocks (30 % of a shifted block's attention at 64x64 with 8x32 windows) and never
materialises a (windows, heads, N, N) bias + mask sum.

The plan depends on sizes only, so a cache of plans can never be stale. Used by the networks' lean eval paths
(never under ``plain_formulation()`` or while tracing).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sr_arch.archs.layers.windows import WindowSize, window_partition


@dataclass(frozen=True)
class AttentionUnits:
    """``count`` consecutive attention units of ``shape`` (rows, cols), starting at token ``start`` of the plan
    order; ``bias_index`` (rows*cols,) picks their bias from the window's (heads, N, N) bias (None: a whole
    window, the bias as it is)."""

    start: int
    count: int
    shape: tuple[int, int]
    bias_index: Tensor | None

    @property
    def tokens(self) -> int:
        return self.count * self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class WindowPlan:
    """Token order of B (H, W) maps for (shifted) window attention.

    Attributes:
        gather: (B*H*W,) rows of the (B*H*W, C) token matrix in plan order (``index_select(0, gather)``).
        scatter: its inverse (plan order back to the map's row-major order).
        units: the attention units, grouped by shape, covering the plan order from token 0.
    """

    gather: Tensor
    scatter: Tensor
    units: tuple[AttentionUnits, ...]


def shifted_window_labels(height: int, width: int, window_size: WindowSize, shift_size: WindowSize) -> Tensor:
    """The region label of every token of the rolled map, per window: (num_windows, Wh*Ww) long.

    The labels ``shifted_window_mask`` is built from (it masks exactly the token pairs with different labels).
    """
    wh, ww = window_size
    sh, sw = shift_size
    labels = torch.zeros((1, height, width, 1), dtype=torch.long)
    count = 0
    for rows in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for cols in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            labels[:, rows, cols, :] = count
            count += 1
    return window_partition(labels, window_size).reshape(-1, wh * ww)


def _regions(labels: Tensor, window_size: WindowSize) -> tuple[Tensor, Tensor, Tensor] | None:
    """Per window and token: the index of the first token of its region (its label's first token), and the
    (rows, cols) of the region each token leads; None when some region is not a rectangle.

    Returns:
        leader, rows, cols: (nW, N) each; rows and cols are meaningless for tokens that lead no region.
    """
    windows, n = labels.shape
    ww = window_size[1]
    index = torch.arange(n).expand(windows, n)
    num_labels = int(labels.max()) + 1
    first = torch.full((windows, num_labels), n).scatter_reduce(1, labels, index, 'amin', include_self=True)
    leader = first.gather(1, labels)
    row, col = index // ww, index % ww
    reduce = dict(dim=1, index=leader, include_self=False)
    row_min = torch.full((windows, n), n).scatter_reduce(src=row, reduce='amin', **reduce)
    row_max = torch.full((windows, n), -1).scatter_reduce(src=row, reduce='amax', **reduce)
    col_min = torch.full((windows, n), n).scatter_reduce(src=col, reduce='amin', **reduce)
    col_max = torch.full((windows, n), -1).scatter_reduce(src=col, reduce='amax', **reduce)
    count = torch.zeros(windows, n, dtype=torch.long).scatter_add(1, leader, torch.ones_like(leader))
    rows, cols = row_max - row_min + 1, col_max - col_min + 1
    leads = leader == index
    if not torch.equal((rows * cols)[leads], count[leads]):
        return None
    return leader, rows, cols


def plan_windows(batch: int, height: int, width: int, window_size: WindowSize, shift_size: WindowSize,
                 device: torch.device | None = None) -> WindowPlan | None:
    """The ``WindowPlan`` of ``batch`` (height, width) maps; None when the shift mask has non-rectangular regions
    (then use the masked formulation).

    The plan reproduces ``window_partition(roll(x, -shift), window)`` with the official Swin shift mask
    (``shifted_window_mask``, through ``shifted_window_labels``): tokens attend exactly the tokens they are not
    masked from.
    """
    wh, ww = window_size
    n = wh * ww
    index = torch.arange(height * width).view(1, height, width, 1)
    shifted = bool(shift_size[0] or shift_size[1])
    if shifted:
        index = torch.roll(index, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    window_tokens = window_partition(index, window_size).reshape(-1, n)  # (nW, N) map position of each token
    num_windows = window_tokens.shape[0]
    if shifted:
        regions = _regions(shifted_window_labels(height, width, window_size, shift_size), window_size)
        if regions is None:
            return None
        leader, rows, cols = regions
    else:
        leader = torch.zeros(num_windows, n, dtype=torch.long)
        rows, cols = torch.full((num_windows, n), wh), torch.full((num_windows, n), ww)
    # attention units: (shape, window, leader); whole windows first, then by shape
    leads = (leader == torch.arange(n)).nonzero().tolist()  # [window, leader] pairs in window-major order
    units: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for w, lead in leads:
        units.setdefault((int(rows[w, lead]), int(cols[w, lead])), []).append((w, lead))
    shapes = sorted(units, key=lambda s: (s != (wh, ww), -s[0] * s[1], s))
    order: list[Tensor] = []
    groups: list[AttentionUnits] = []
    start = 0
    for shape in shapes:
        members = units[shape]
        tokens = []
        for w, lead in members:
            region = (leader[w] == lead).nonzero().flatten()  # row-major inside the region
            tokens.append(window_tokens[w, region])
        tokens_one = torch.cat(tokens)  # (count * rows * cols,) map positions of one image
        order.append((torch.arange(batch)[:, None] * (height * width) + tokens_one[None]).flatten())
        bias_index = None
        if shape != (wh, ww):
            bias_index = (torch.arange(shape[0])[:, None] * ww + torch.arange(shape[1])[None]).flatten().to(device)
        groups.append(AttentionUnits(start, batch * len(members), shape, bias_index))
        start += batch * tokens_one.numel()
    gather = torch.cat(order)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel())
    return WindowPlan(gather.to(device), scatter.to(device), tuple(groups))


class WindowPlanCache:
    """``plan_windows`` results for the ``capacity`` most recent (batch, size, window, shift, device) keys."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self.plans: dict[tuple, WindowPlan | None] = {}

    def get(self, batch: int, height: int, width: int, window_size: WindowSize, shift_size: WindowSize,
            device: torch.device) -> WindowPlan | None:
        key = (batch, height, width, tuple(window_size), tuple(shift_size), device)
        if key not in self.plans:
            while len(self.plans) >= self.capacity:
                self.plans.pop(next(iter(self.plans)))
            with torch.inference_mode(False):
                self.plans[key] = plan_windows(batch, height, width, window_size, shift_size, device)
        return self.plans[key]
