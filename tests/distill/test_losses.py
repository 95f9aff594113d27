"""KDLoss against values computed by hand (plain Python math, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from speedtrain.distill.losses import KDLoss
from speedtrain.errors import UserError


def _softmax(xs, temp=1.0):
    e = [math.exp(x / temp) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
TEACHER = [[1.0, 1.0, -2.0], [0.0, 3.0, 0.0]]
LABELS = [0, 1]


def _hand(alpha, temp):
    kd = sum(_kl(_softmax(t, temp), _softmax(s, temp)) for s, t in zip(STUDENT, TEACHER)) / 2 * temp**2
    ce = -sum(math.log(_softmax(s)[y]) for s, y in zip(STUDENT, LABELS)) / 2
    return alpha * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize(("alpha", "temp"), [(0.5, 2.0), (0.3, 1.0), (0.9, 4.0)])
def test_matches_hand_computed(alpha, temp):
    out = KDLoss(alpha, temp)(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS))
    for got, want in zip(out, _hand(alpha, temp)):
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_temperature_squared_scaling():
    kd2 = KDLoss(1.0, 2.0)(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)).kd_loss.item()
    kl_at_2 = sum(_kl(_softmax(t, 2.0), _softmax(s, 2.0)) for s, t in zip(STUDENT, TEACHER)) / 2
    assert kd2 == pytest.approx(4.0 * kl_at_2, rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_ignores_labels():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    assert KDLoss(0.0, 2.0)(s, t, y).loss.item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())
    other_labels = torch.tensor([2, 2])
    assert KDLoss(1.0, 2.0)(s, t, y).loss.item() == pytest.approx(KDLoss(1.0, 2.0)(s, t, other_labels).loss.item())


def test_identical_logits_have_zero_kd_and_teacher_gets_no_gradient():
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(STUDENT, requires_grad=True)
    out = KDLoss(0.5, 2.0)(s, t, torch.tensor(LABELS))
    assert out.kd_loss.item() == pytest.approx(0.0, abs=1e-7)
    out.loss.backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize(("alpha", "temp", "message"), [(1.5, 2.0, "distill.alpha=1.5"), (-0.1, 2.0, "distill.alpha"),
                                                         (0.5, 0.0, "distill.temperature=0.0")])
def test_bad_values(alpha, temp, message):
    with pytest.raises(UserError, match=message):
        KDLoss(alpha, temp)
