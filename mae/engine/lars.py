"""LARS, as the official MAE linear probe uses it (Appendix A.2; You et al. 2017).

For every parameter with a gradient ``g`` (``w`` the parameter, ``wd`` its group's weight decay):

* ``w.ndim > 1``: ``u = g + wd * w``, scaled by the trust ratio ``q = eta * ||w|| / ||u||``
  (``q = 1`` when either norm is 0), with ``eta = trust_coefficient = 0.001``. This happens even
  when ``wd = 0`` (the paper's setting) -- unlike LARS variants that adapt only with weight decay.
* ``w.ndim <= 1`` (biases, norm weights): ``u = g``, no adaptation and no weight decay.

then heavy-ball momentum ``mu <- momentum * mu + u`` (``mu`` starts at 0) and ``w <- w - lr * mu``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS with the official linear-probe semantics (see the module docstring)."""

    def __init__(self, params: Iterable[Any], lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS setting: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                             f"trust_coefficient={trust_coefficient}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                if p.ndim > 1:
                    u = u.add(p, alpha=g["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(u)
                    one = torch.ones_like(w_norm)
                    q = torch.where(w_norm > 0, torch.where(u_norm > 0, g["trust_coefficient"] * w_norm / u_norm, one), one)
                    u = u.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(u)
                p.add_(mu, alpha=-g["lr"])
        return loss


def lars_factory(momentum: float = 0.9, trust_coefficient: float = 0.001) -> Callable[[list[dict[str, Any]], float], LARS]:
    """``TrainHooks.make_optimizer`` of the Trainer: ``(param_groups, lr) -> LARS`` (weight decay from the groups)."""
    def make(param_groups: list[dict[str, Any]], lr: float) -> LARS:
        return LARS(param_groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    return make
