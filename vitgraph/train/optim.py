"""Optimiser, learning-rate schedule and weight EMA.

- Parameter groups: with `no_decay_1d` (timm / DeiT), biases, 1-D weights (norms, scales,
  shifts, temperatures) and position embeddings / cls / dist tokens get no weight decay;
  without it (the SPT/LSA code) every parameter is decayed.
- Schedule, per iteration: linear warm-up from warmup_lr to the peak over the warm-up steps,
  then cosine from the peak to min_lr at the last step (or constant at the peak).
- EMA (DeiT's ModelEma, Polyak averaging): ema = decay * ema + (1 - decay) * weights after
  every optimiser step; floating-point buffers (BatchNorm statistics) are averaged the same way,
  integer ones (batch counters) copied.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool) -> list[dict]:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = no_decay_1d and (p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES)
        (plain if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, recipe.weight_decay, recipe.no_decay_1d)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=False)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(step: int, total: int, warmup: int, peak: float, warmup_lr: float, min_lr: float,
          schedule: str = "cosine") -> float:
    """The learning rate of optimiser step `step` (0-based) of `total`."""
    if step < warmup:
        return warmup_lr + (peak - warmup_lr) * step / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe, peak: float, steps_per_epoch: int,
                    epochs: int, max_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per iteration along `lr_at` (its state goes in checkpoints); with
    `max_steps`, the schedule ends (cosine at its floor) after that many steps."""
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = recipe.warmup_steps if recipe.warmup_steps > 0 else round(recipe.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, total)
    for group in optimizer.param_groups:
        group["lr"] = peak
        group["initial_lr"] = peak
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, total, warmup, peak, recipe.warmup_lr, recipe.min_lr, recipe.schedule) / peak)


class EMA:
    """An exponential moving average of a model's weights (a frozen copy, in eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for key, avg in self.module.state_dict().items():
            new = current[key].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(self.decay).add_(new, alpha=1 - self.decay)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
