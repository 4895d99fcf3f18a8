"""Optimisers (LARS for AudioNTT, AdamW for ViT_C; Adam and SGD as in the paper's sweeps), parameter
grouping and the LR schedule.

Learning rates are given for a batch of 128 (the paper's tuning batch) and scaled linearly to the
actual batch in exactly one place, :func:`scale_lr`, called by :func:`build_optimizer`. Every param
group stores its scaled peak rate as ``base_lr``; the schedule multiplies it by a factor that is a
pure function of the step, so resuming only needs the step (and the optimiser state for momenta).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

REFERENCE_BATCH = 128

# Paper, Appendix A.1 (LARS for AudioNTT; footnote 14: momentum 0.9, eta 1e-3). Appendix B quotes
# wd 1e-6 for the same "default" triplet; we follow A.1's 1e-5, the setting of the reported models.
LARS_DEFAULTS = {"lr_weights": 0.4, "lr_biases": 0.0048, "weight_decay": 1e-5}
# Paper, Appendix A.1 (AdamW for ViT_C, Xiao et al.'s values); one rate for all parameters.
ADAMW_DEFAULTS = {"lr_weights": 6.25e-5, "lr_biases": 6.25e-5, "weight_decay": 0.24}
# Adam (L2 weight decay added to the gradient) and SGD with momentum 0.9: the paper only sweeps them
# (Appendix B: lr 1e-6..1e-2, wd 1e-3..1) and reports no chosen values, so they have no defaults.
OPTIMIZERS = ("lars", "adamw", "adam", "sgd")
WITHOUT_DEFAULTS = ("adam", "sgd")


def check_optimizer_settings(name: str, lr_weights: float | None, weight_decay: float | None) -> None:
    """Refuse an optimiser without paper defaults (Adam, SGD) when its rate or decay is left unset."""
    if name in WITHOUT_DEFAULTS and (lr_weights is None or weight_decay is None):
        raise ValueError(
            f"optimizer={name} has no paper defaults: set lr_weights=... and weight_decay=... "
            "(the paper sweeps lr 1e-6..1e-2, wd 1e-3..1)"
        )


# Parameters excluded from weight decay (and LARS adaptation) by name, beside every ndim <= 1 tensor.
# The ViT [CLS] token is a learned embedding, not a weight matrix: decaying it only pulls the
# sequence summary towards zero, so like MAE/timm we treat it as a "no decay" parameter.
NO_DECAY_NAMES = ("cls_token",)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), in the Barlow Twins formulation.

    Per parameter, for groups with ``lars_adapt=True``::

        g = grad + weight_decay * p
        q = eta * ||p|| / ||g||   (1 where either norm is 0)
        mu = momentum * mu + q * g
        p = p - lr * mu

    Groups with ``lars_adapt=False`` (biases, norm parameters) skip both the weight decay and the
    trust ratio: plain SGD with momentum.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 1e-3,
        lars_adapt: bool = True,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(
                f"invalid LARS hyper-parameters lr={lr} wd={weight_decay} m={momentum} eta={eta}"
            )
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars_adapt=lars_adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars_adapt"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    one = torch.ones_like(p_norm)
                    trust = torch.where(
                        p_norm > 0, torch.where(g_norm > 0, group["eta"] * p_norm / g_norm, one), one
                    )
                    g = g.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, BatchNorm/LayerNorm scales (every ndim <= 1 tensor) and the [CLS] token."""
    return param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES


def param_groups(
    model: nn.Module, lr_weights: float, lr_biases: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Two groups: decayed/LARS-adapted weights, and the excluded no-decay parameters.

    Each group carries ``base_lr`` (the peak rate the schedule scales) and ``lars_adapt`` (read by
    LARS, carried along harmlessly by other optimisers). Frozen parameters are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = [
        dict(name="weights", params=decay, lr=lr_weights, weight_decay=weight_decay, lars_adapt=True),
        dict(name="no_decay", params=no_decay, lr=lr_biases, weight_decay=0.0, lars_adapt=False),
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def scale_lr(lr: float, batch_size: int) -> float:
    """Linear scaling rule from the batch of 128 the rates were tuned at (paper, C.2)."""
    return lr * batch_size / REFERENCE_BATCH


def build_optimizer(
    name: str,
    model: nn.Module,
    lr_weights: float | None = None,
    lr_biases: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = REFERENCE_BATCH,
    momentum: float = 0.9,
    eta: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``"lars"`` or ``"adamw"`` with the paper's defaults for any rate/decay left as None; ``"adam"`` and
    ``"sgd"`` (no paper defaults) need ``lr_weights`` and ``weight_decay``. One rate for weights and
    biases unless ``lr_biases`` is given (LARS: its own bias rate).

    Rates are batch-128 values; they are scaled here (once) to ``batch_size``, which must be the
    global batch (all ranks together).
    """
    name = name.lower()
    if name == "lars":
        defaults = LARS_DEFAULTS
    elif name == "adamw":
        defaults = ADAMW_DEFAULTS
    elif name in WITHOUT_DEFAULTS:
        check_optimizer_settings(name, lr_weights, weight_decay)
        defaults = {}
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    lr_w = defaults["lr_weights"] if lr_weights is None else lr_weights
    if lr_biases is None:
        # LARS has its own bias rate; the others use one rate for all parameters unless told otherwise.
        lr_biases = defaults["lr_biases"] if name == "lars" else lr_w
    lr_w, lr_b = scale_lr(lr_w, batch_size), scale_lr(lr_biases, batch_size)
    wd = defaults["weight_decay"] if weight_decay is None else weight_decay
    groups = param_groups(model, lr_w, lr_b, wd)
    if name == "lars":
        return LARS(groups, lr=lr_w, weight_decay=wd, momentum=momentum, eta=eta)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr_w, weight_decay=wd, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr_w, weight_decay=wd, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr_w, weight_decay=wd, betas=betas, eps=eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_factor``.

    Step 0 gives 0 (when warming up), step ``warmup_steps`` gives 1, ``total_steps`` and beyond give
    ``min_factor``.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}"
        )
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps == warmup_steps:
        return 1.0
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's ``lr`` to ``base_lr * factor``."""
    for group in optimizer.param_groups:
        if "base_lr" not in group:
            raise KeyError("param group has no 'base_lr'; build groups with param_groups()")
        group["lr"] = group["base_lr"] * factor
