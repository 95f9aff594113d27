"""``distill.mixup``: the student's head reads two texts' features mixed, and the loss mixes their targets alike."""

from __future__ import annotations

import functools

import pytest
import torch

from speedtrain.config import compose_config
from speedtrain.distill.losses import KDLoss
from speedtrain.errors import UserError
from speedtrain.lit.distill import DistillModule
from speedtrain.models.static import build_static_student
from speedtrain.pipeline import check_config
from tests.conftest import TINY_RUN


def _module(mixup: float, **kwargs) -> DistillModule:
    torch.manual_seed(0)
    model = build_static_student(60, 2, hidden_size=8, buckets=16, conv_channels=4, head_hidden=6, dropout=0.0)
    module = DistillModule(model, 2, functools.partial(torch.optim.AdamW, lr=1e-2), scheduler=None,
                           loss=KDLoss(alpha=0.5, temperature=2.0), mixup=mixup, **kwargs)
    for param in model.classifier.parameters():  # not the near-constant outputs of a fresh head
        torch.nn.init.normal_(param, std=0.5)
    module.logging_step = lambda: False  # no trainer attached: nothing to log
    module.log_train_step_stats = lambda *args: None
    return module.train()


def test_the_head_reads_mixed_features_and_the_loss_mixes_both_texts_targets(monkeypatch):
    batch = {"input_ids": torch.randint(1, 60, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1, 0]), "teacher_logits": torch.randn(4, 2),
             "sample_weight": torch.tensor([1.0, 0.5, 1.0, 2.0])}
    module = _module(0.4)
    heads = []
    module.model.classifier.register_forward_hook(lambda m, args, out: heads.append(args[0].detach()))
    lam, perm = 0.3, torch.tensor([2, 3, 0, 1])
    monkeypatch.setattr(module, "_mix_draw", lambda n: (lam, perm))
    loss = module.training_step(batch, 0)
    module.mixup = 0.0  # the same step unmixed: the features each text has alone
    plain_loss = module.training_step(batch, 0)
    mixed, plain = heads
    torch.testing.assert_close(mixed, lam * plain + (1 - lam) * plain[perm])
    assert not torch.allclose(mixed, plain)
    logits = module.model.classifier(mixed)
    kd, w = module.kd, batch["sample_weight"]
    expected = (lam * kd(logits, batch["teacher_logits"], batch["labels"], w).loss
                + (1 - lam) * kd(logits, batch["teacher_logits"][perm], batch["labels"][perm], w[perm]).loss)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, plain_loss)
    assert not module.model.classifier._forward_pre_hooks  # the mixing hook is gone after the step
    module.eval()
    with torch.no_grad():  # evaluation never mixes
        torch.testing.assert_close(module.model(batch["input_ids"]).logits, module.model.classifier(plain))


def test_draws_are_a_beta_weight_and_a_permutation_and_one_text_is_not_mixed():
    module = _module(0.4)
    lams = []
    for _ in range(50):
        lam, perm = module._mix_draw(8)
        lams.append(lam)
        assert sorted(perm.tolist()) == list(range(8))
    assert all(0.0 <= x <= 1.0 for x in lams) and min(lams) < 0.2 and max(lams) > 0.8  # Beta(0.4, 0.4): U-shaped
    assert module._mix_draw(1) is None


def test_bad_mixup_settings():
    for bad in (-0.5, float("nan"), "0.4", True):
        with pytest.raises(UserError, match=r"distill.mixup=.* must be a number >= 0"):
            _module(bad)
    cfg = compose_config([*TINY_RUN, "+experiment=distill", "distill.mixup=-1"])
    with pytest.raises(UserError, match=r"distill.mixup=-1 must be a number >= 0"):
        check_config(cfg)


def test_a_student_without_a_classifier_cannot_mix():
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    with pytest.raises(UserError, match=r"distill.mixup=0.4 mixes the features .* Bare lacks"):
        DistillModule(Bare(), 2, functools.partial(torch.optim.AdamW, lr=1e-2), scheduler=None,
                      loss=KDLoss(alpha=0.5, temperature=2.0), mixup=0.4)
