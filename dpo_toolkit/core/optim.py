"""Optimizers: torch's, by name, and one over a batched ensemble whose members have their
own learning rate and weight decay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .config import TrainConfig

CLASSES = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


def make_optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer cfg names, with torch's defaults apart from lr and weight_decay (plain SGD
    has no momentum), and the multi-tensor (foreach) implementation: the same numbers as the
    per-tensor loop, fewer kernel calls."""
    return CLASSES[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


class MemberwiseOptimizer:
    """One optimizer over stacked ensemble weights (leading dimension: the member) in which
    member i has its own learning rate lrs[i] and weight decay weight_decays[i].

    torch's optimizers take one learning rate per parameter group, and a stacked tensor is
    one parameter. Their moments (Adam's m and v, RMSprop's square average) do not depend on
    the learning rate, and the step is linear in it, so member i's step is lrs[i] × the step
    the same optimizer takes at lr = 1. Weight decay is applied per member the way torch
    applies it: decoupled for AdamW (p ← p · (1 − lr·wd) before the step), added to the
    gradient (g ← g + wd·p, before the moments) for Adam, RMSprop and SGD. The result equals
    separate runs up to float rounding of the step (a test checks it).
    """

    def __init__(self, params: Sequence[torch.Tensor], optimizer: str, lrs: Sequence[float], weight_decays: Sequence[float]):
        if len(lrs) != len(weight_decays):
            raise ValueError(f"one learning rate and one weight decay per member: got {len(lrs)} and {len(weight_decays)}")
        self.params = list(params)
        if any(p.shape[0] != len(lrs) for p in self.params):
            raise ValueError(f"every stacked parameter must have {len(lrs)} members along its first dimension")
        self.base = make_optimizer(self.params, TrainConfig(optimizer=optimizer, lr=1.0, weight_decay=0.0))
        lrs64, wds64 = torch.tensor(lrs, dtype=torch.float64), torch.tensor(weight_decays, dtype=torch.float64)  # (M,)
        self.decoupled = optimizer == "adamw"
        # per-member factors, each (M, 1, …) in its parameter's dtype, computed once: the step's scale lrs[i], and
        # the weight decay's, 1 − lr·wd (decoupled, a factor of the weights) or wd (a term of the gradient)
        self._scales = [self._per_member(lrs64, p) for p in self.params]
        self._decays = [1 - self._per_member(lrs64 * wds64, p) if self.decoupled else self._per_member(wds64, p)
                        for p in self.params]  # fmt: skip
        self._before = [torch.empty_like(p) for p in self.params]  # the weights before a step, reused

    @staticmethod
    def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like).view(-1, *([1] * (like.ndim - 1)))  # (M, 1, …) broadcasts over one member's weights

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """Weight decay per member, torch's step at lr = 1, then p ← before + lrs[i] · (p − before), in a
        few multi-tensor kernels over every parameter with a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params, before = [self.params[i] for i in live], [self._before[i] for i in live]
        scales, decays = [self._scales[i] for i in live], [self._decays[i] for i in live]
        if self.decoupled:
            torch._foreach_mul_(params, decays)
        else:
            torch._foreach_add_([p.grad for p in params], torch._foreach_mul(params, decays))
        torch._foreach_copy_(before, params)
        self.base.step()  # at lr = 1
        torch._foreach_sub_(params, before)  # the step at lr = 1
        torch._foreach_mul_(params, scales)
        torch._foreach_add_(params, before)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def ensemble_optimizer(
    params: Sequence[torch.Tensor], cfgs: Sequence[TrainConfig]
) -> torch.optim.Optimizer | MemberwiseOptimizer:
    """The optimizer of an ensemble whose member i follows cfgs[i]: torch's own when every
    member has one learning rate and weight decay (so those runs keep their numbers bit for
    bit), else a MemberwiseOptimizer. The members must share the optimizer."""
    if len({c.optimizer for c in cfgs}) != 1:
        raise ValueError(f"the members of an ensemble share one optimizer, got {sorted({c.optimizer for c in cfgs})}")
    if len({(c.lr, c.weight_decay) for c in cfgs}) == 1:
        return make_optimizer(params, cfgs[0])
    return MemberwiseOptimizer(params, cfgs[0].optimizer, [c.lr for c in cfgs], [c.weight_decay for c in cfgs])
