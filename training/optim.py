"""Optimizers and the learning-rate schedule of the recipe.

`TFRMSprop` is TensorFlow's RMSProp (tf.compat.v1.train.RMSPropOptimizer, what the reference trained
with), which differs from `torch.optim.RMSprop` in three ways that matter at eps=1e-3:

- epsilon is added *inside* the square root: ``g / sqrt(ms + eps)``, not ``g / (sqrt(ms) + eps)``;
- the mean square starts at ones, not zeros, so the first steps are about ``lr * g`` instead of
  ``lr * g / |g|`` (a huge first step for small gradients);
- momentum accumulates the lr-scaled update, ``mom = m * mom + lr * g / sqrt(ms + eps); w -= mom``,
  so a change of lr acts gradually, through the momentum buffer.

The schedule is a pure function of the global step (`LrSchedule.__call__`), so resuming needs only the
step number and no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from training.recipe import Recipe


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp with TensorFlow's semantics (see the module docstring).

    `weight_decay` is an L2 term added to the gradient (as the reference's loss term
    ``wd * sum(l2_loss(w))``), so it is normalised by the RMS like the rest of the gradient.
    """

    def __init__(self, params: Iterable, lr: float, decay: float = 0.9, momentum: float = 0.9, eps: float = 1e-3,
                 weight_decay: float = 0.0):
        if lr < 0 or not 0 < decay < 1 or not 0 <= momentum < 1 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid TFRMSprop settings lr={lr} decay={decay} momentum={momentum} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("TFRMSprop does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    if group["momentum"] > 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            squares = [self.state[p]["square_avg"] for p in params]
            decay = group["decay"]
            torch._foreach_mul_(squares, decay)
            torch._foreach_addcmul_(squares, grads, grads, value=1 - decay)
            denominators = torch._foreach_add(squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            if group["momentum"] > 0:
                buffers = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_addcdiv_(buffers, grads, denominators, value=group["lr"])
                torch._foreach_sub_(params, buffers)
            else:
                torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv and dense weights get weight decay, BN scales/offsets and biases do not.

    Why not on BN and biases: they are a few per-channel scales and offsets, so L2 on them removes no
    meaningful capacity, while pulling a BN scale towards 0 switches its channel off and pulling offsets
    to 0 only biases the function. (For the conv weights that BN follows, L2 mostly raises the effective
    learning rate, which the recipe's small 1e-5 keeps mild.) The reference excludes BN variables only;
    excluding biases too (SE and classifier) follows common PyTorch practice and changes very little.
    """
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


@dataclass(frozen=True)
class LrSchedule:
    """lr at a global step: linear warm-up, then exponential (staircase) or cosine decay.

    Warm-up rises linearly to the peak over `warmup_steps`, reaching it on the last warm-up step
    (lr(s) = peak * (s + 1) / warmup_steps, so the first step is not wasted at lr 0).

    Exponential, as the reference: ``peak * rate ** floor(step / decay_steps)`` counted from step 0, and
    the warm-up simply replaces it while ``step < warmup_steps`` (so after 5 warm-up epochs the lr is
    already 0.97**2 times the peak, as in the reference). Staircase, as the reference: the lr holds for
    2.4 epochs then drops 3%; with so small a drop the staircase and a smooth decay train alike, and the
    staircase is what the published numbers used.

    Cosine: from the peak at the end of warm-up to 0 at the last step of the run.
    """

    peak: float
    warmup_steps: int
    total_steps: int
    kind: str = "cosine"
    decay_rate: float = 0.97
    decay_steps: float = 1.0

    @classmethod
    def from_recipe(cls, recipe: Recipe, steps_per_epoch: int) -> LrSchedule:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        return cls(
            peak=recipe.lr,
            warmup_steps=int(round(recipe.warmup_epochs * steps_per_epoch)),
            total_steps=recipe.epochs * steps_per_epoch,
            kind=recipe.schedule,
            decay_rate=recipe.lr_decay_rate,
            decay_steps=max(1.0, recipe.lr_decay_epochs * steps_per_epoch),
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.kind == "exponential":
            return self.peak * self.decay_rate ** math.floor(step / self.decay_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, LrSchedule]:
    """The recipe's optimizer over `model` (weight decay on weights only) and its lr schedule.

    The optimizer starts at lr(0); the training loop sets ``schedule(step)`` before every step
    (`set_lr`).
    """
    schedule = LrSchedule.from_recipe(recipe, steps_per_epoch)
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "rmsprop":
        optimizer: torch.optim.Optimizer = TFRMSprop(
            groups, lr=schedule(0), decay=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.rmsprop_eps
        )
    elif recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=schedule(0), betas=(recipe.momentum, 0.999))
    else:
        optimizer = torch.optim.SGD(groups, lr=schedule(0), momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    return optimizer, schedule


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
