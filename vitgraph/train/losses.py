"""Training losses on soft targets, and the distillation losses of DeiT and BinaryViT.

- `soft_cross_entropy`: -sum_k t_k log softmax(z)_k, averaged over the batch (timm's
  SoftTargetCrossEntropy; with one-hot smoothed targets it is label-smoothed CE).
- `sigmoid_cross_entropy`: binary CE per class summed over classes, averaged over the batch
  (AugReg / big_vision's sigmoid_xent).
- DeiT (Touvron et al. 2020), through the distillation token, alpha = 0.5:
  loss = (1 - alpha) * CE(cls_logits, targets) + alpha * KD(dist_logits, teacher_logits);
  soft KD = KL(softmax(t / tau) || softmax(s / tau)) summed over batch and classes, * tau^2,
  divided by batch * classes (DeiT's DistillationLoss, reduction "sum" then / numel);
  hard KD = CE(dist_logits, argmax teacher).
- BinaryViT (Le & Li 2023): knowledge distillation only: -sum_k softmax(t / tau)_k *
  log softmax(s / tau)_k averaged over the batch (its DistributionLoss), no ground-truth term.
A model without a distillation token uses its one output for both terms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def sigmoid_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").sum(-1).mean()


def deit_soft(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    s = F.log_softmax(student.float() / tau, dim=-1)
    t = F.log_softmax(teacher.float() / tau, dim=-1)
    return F.kl_div(s, t, reduction="sum", log_target=True) * (tau * tau) / student.numel()


def deit_hard(student: Tensor, teacher: Tensor) -> Tensor:
    return F.cross_entropy(student.float(), teacher.argmax(dim=-1))


def kd_only(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    return soft_cross_entropy(student / tau, F.softmax(teacher.float() / tau, dim=-1))


def training_loss(outputs: Tensor | tuple[Tensor, Tensor], targets: Tensor, kind: str = "softmax",
                  distill: str = "none", teacher: Tensor | None = None, alpha: float = 0.5,
                  tau: float = 1.0) -> Tensor:
    """The loss of one batch. `outputs` is the logits, or (cls, dist) logits of a distilled
    model in training mode; `teacher` the teacher's logits on the same augmented batch."""
    cls, dist = outputs if isinstance(outputs, tuple) else (outputs, outputs)
    if distill == "kd":
        return kd_only(cls, teacher, tau)
    supervised = soft_cross_entropy if kind == "softmax" else sigmoid_cross_entropy
    base = supervised(cls, targets)
    if distill == "none":
        if isinstance(outputs, tuple):  # a distill-token model trained without a teacher: both heads on the labels
            return (base + supervised(dist, targets)) / 2
        return base
    kd = deit_soft(dist, teacher, tau) if distill == "soft" else deit_hard(dist, teacher)
    return (1 - alpha) * base + alpha * kd
