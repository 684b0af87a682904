"""The losses against hand-written formulas: soft-target CE, sigmoid CE, DeiT soft and hard
distillation, BinaryViT's KD-only loss, and how training_loss combines them."""
from __future__ import annotations

import math

import pytest
import torch
import train_helpers  # noqa: F401  (one torch thread)

from vitgraph.train import losses as L

S = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])  # student logits (B=2, K=3)
T = torch.tensor([[1.0, 2.0, 0.0], [0.5, -0.5, 2.5]])  # teacher logits
Y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # one-hot targets


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def test_soft_cross_entropy():
    want = sum(-math.log(softmax(S[i].tolist())[j]) for i, j in ((0, 0), (1, 2))) / 2
    assert L.soft_cross_entropy(S, Y).item() == pytest.approx(want, rel=1e-6)


def test_sigmoid_cross_entropy():
    def bce(z: float, y: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))
    want = sum(bce(S[i, k].item(), Y[i, k].item()) for i in range(2) for k in range(3)) / 2
    assert L.sigmoid_cross_entropy(S, Y).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_deit_soft_distillation(tau):
    kl = 0.0
    for i in range(2):
        p_t, p_s = softmax(T[i].tolist(), tau), softmax(S[i].tolist(), tau)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    want = kl * tau * tau / (2 * 3)  # summed, x tau^2, / (batch * classes)
    assert L.deit_soft(S, T, tau).item() == pytest.approx(want, rel=1e-5)


def test_deit_hard_distillation():
    teacher_labels = [1, 2]  # argmax of T
    want = sum(-math.log(softmax(S[i].tolist())[teacher_labels[i]]) for i in range(2)) / 2
    assert L.deit_hard(S, T).item() == pytest.approx(want, rel=1e-6)


def test_kd_only_is_soft_ce_against_teacher_softmax():
    want = sum(-sum(pt * math.log(ps) for pt, ps in zip(softmax(T[i].tolist()), softmax(S[i].tolist())))
               for i in range(2)) / 2
    assert L.kd_only(S, T).item() == pytest.approx(want, rel=1e-6)


def test_training_loss_combinations():
    dist = S.flip(1)
    base = L.soft_cross_entropy(S, Y)
    for mode, kd in (("soft", L.deit_soft(dist, T, 2.0)), ("hard", L.deit_hard(dist, T))):
        got = L.training_loss((S, dist), Y, distill=mode, teacher=T, alpha=0.5, tau=2.0)
        assert got.item() == pytest.approx(0.5 * base.item() + 0.5 * kd.item(), rel=1e-6)
    # KD only: no ground-truth term at all (targets ignored)
    assert L.training_loss(S, torch.zeros_like(Y), distill="kd", teacher=T).item() == pytest.approx(
        L.kd_only(S, T).item())
    assert L.training_loss(S, Y).item() == pytest.approx(base.item())
    both = (base + L.soft_cross_entropy(dist, Y)) / 2
    assert L.training_loss((S, dist), Y).item() == pytest.approx(both.item())
