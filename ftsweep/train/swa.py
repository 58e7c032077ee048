"""Stochastic weight averaging without per-step host syncs.

torch's AveragedModel keeps its count in a device tensor and branches on it in
Python (`if n_averaged > 0`), a GPU sync every step. Here the count lives on the
host and the update is one foreach lerp over all parameters:
avg <- avg + (w - avg) / (n + 1), the equal-weight running mean.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverager:
    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model)  # buffers (position ids, ...) as they are at the start
        self.module.requires_grad_(False)
        self._averaged = list(self.module.parameters())
        self.count = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = [p.detach() for p in model.parameters()]
        if self.count == 0:
            torch._foreach_copy_(self._averaged, current)
        else:
            torch._foreach_lerp_(self._averaged, current, 1.0 / (self.count + 1))
        self.count += 1
