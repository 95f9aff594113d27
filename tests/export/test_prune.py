"""FFN pruning: importance scores, exact slicing, the HF round-trip, and distillation recovery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from speedtrain.errors import UserError
from speedtrain.export.prune import ffn_importance, n_params, prune_and_recover, prune_ffn, recover

SIZE, HIDDEN, VOCAB, LABELS = 64, 32, 100, 3


def _model(initializer_range=0.02):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=SIZE, max_position_embeddings=16, num_labels=LABELS,
                        initializer_range=initializer_range)
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def model():
    return _model()


def _batches(n=4, batch=8, length=12, seed=1):
    """``n`` batches of (input_ids (B, T), attention_mask (B, T), labels (B,)), rows of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
        lengths = torch.randint(3, length + 1, (batch,), generator=gen)
        mask = (torch.arange(length) < lengths[:, None]).long()
        out.append((ids * mask, mask, torch.randint(0, LABELS, (batch,), generator=gen)))
    return out


def _pairs(batches):
    return [(ids, mask) for ids, mask, _ in batches]


@torch.no_grad()
def _logits(model, batches):
    return torch.cat([model(input_ids=ids, attention_mask=mask).logits for ids, mask, *_ in batches])


def _kd(student, reference, batches):
    """T = 1 KL(reference || student) over all rows: what recovery should shrink."""
    s, t = _logits(student, batches), _logits(reference, batches)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean").item()


def test_importance_shapes_and_mode(model):
    model.train()
    scores = ffn_importance(model, _pairs(_batches(2)))
    assert [s.shape for s in scores] == [(SIZE,), (SIZE,)]
    assert all((s >= 0).all() and (s > 0).any() for s in scores)
    assert model.training  # the caller's mode is restored


def test_importance_ignores_padding(model):
    ids, mask, _ = _batches(1)[0]
    garbage = torch.where(mask.bool(), ids, torch.randint(1, VOCAB, ids.shape))  # other tokens under the padding
    for a, b in zip(ffn_importance(model, [(ids, mask)]), ffn_importance(model, [(garbage, mask)])):
        torch.testing.assert_close(a, b)


def test_keep_all_is_exact(model):
    batches = _batches(2)
    pruned = prune_ffn(model, SIZE, ffn_importance(model, _pairs(batches)))
    torch.testing.assert_close(_logits(pruned, batches), _logits(model, batches), atol=1e-6, rtol=0)


def test_shapes_params_and_original_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_ffn(model, 16, ffn_importance(model, _pairs(_batches(2))))
    for layer in pruned.bert.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (16, HIDDEN)
        assert layer.intermediate.dense.bias.shape == (16,)
        assert layer.output.dense.weight.shape == (HIDDEN, 16)
        assert layer.output.dense.bias.shape == (HIDDEN,)
    assert pruned.config.intermediate_size == 16 and model.config.intermediate_size == SIZE
    assert n_params(pruned) == n_params(model) - 2 * (SIZE - 16) * (2 * HIDDEN + 1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_dead_neurons_are_the_ones_removed(model):
    # 48 random neurons per layer that cannot reach the output: ranking them last and slicing right keeps logits
    gen = torch.Generator().manual_seed(2)
    kept = []
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            perm = torch.randperm(SIZE, generator=gen)
            layer.output.dense.weight[:, perm[16:]] = 0.0
            kept.append(perm[:16].sort().values)
    batches = _batches(2)
    scores = ffn_importance(model, _pairs(batches))
    for s, k in zip(scores, kept):
        assert set(s.topk(16).indices.tolist()) == set(k.tolist())
    pruned = prune_ffn(model, 16, scores)
    for layer, pruned_layer, k in zip(model.bert.encoder.layer, pruned.bert.encoder.layer, kept):
        assert torch.equal(pruned_layer.intermediate.dense.weight, layer.intermediate.dense.weight[k])  # order kept
    torch.testing.assert_close(_logits(pruned, batches), _logits(model, batches), atol=1e-5, rtol=0)


def test_save_and_load_round_trip(model, tmp_path):
    batches = _batches(2)
    pruned = prune_ffn(model, 16, ffn_importance(model, _pairs(batches)))
    pruned.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.intermediate_size == 16
    assert torch.equal(_logits(loaded, batches), _logits(pruned, batches))


def test_recover_lowers_kd_loss():
    # default init gives near-uniform logits that pruning barely moves; a wider init gives a gap to close
    model, batches = _model(initializer_range=0.2), _batches(4)
    student = prune_ffn(model, 8, ffn_importance(model, _pairs(batches)))
    before = _kd(student, model, batches)
    assert before > 0.05
    out = recover(student, model, batches, steps=40, lr=1e-3, alpha=1.0, seed=0)  # alpha=1: teacher term only
    assert out is student and not student.training and not model.training
    assert _kd(student, model, batches) < 0.5 * before


def test_recover_seed_is_repeatable_and_local(model):
    batches = _batches(2)
    scores = ffn_importance(model, _pairs(batches))
    state = torch.get_rng_state()
    a = recover(prune_ffn(model, 16, scores), model, batches, steps=3, seed=7)
    b = recover(prune_ffn(model, 16, scores), model, batches, steps=3, seed=7)
    assert torch.equal(_logits(a, batches), _logits(b, batches))
    assert torch.equal(torch.get_rng_state(), state)  # no global seeding


def test_prune_and_recover_info(model):
    pruned, info = prune_and_recover(model, _batches(2), keep_ratio=0.25, steps=2, lr=1e-3)
    assert info["intermediate_size"] == (SIZE, 16)
    assert info["params"] == (n_params(model), n_params(pruned)) and info["params"][1] < info["params"][0]
    assert info["recovery_steps"] == 2 and info["recovery_s"] >= 0
    assert not pruned.training


@pytest.mark.parametrize("keep", [0, -3, SIZE + 1])
def test_bad_keep(model, keep):
    scores = [torch.ones(SIZE), torch.ones(SIZE)]
    with pytest.raises(UserError, match=rf"keep={keep}\b"):
        prune_ffn(model, keep, scores)


def test_bad_inputs(model):
    with pytest.raises(UserError, match="keep_ratio=1.5"):
        prune_and_recover(model, _batches(1), keep_ratio=1.5, steps=1, lr=1e-3)
    with pytest.raises(UserError, match="no real tokens"):
        ffn_importance(model, [])
    with pytest.raises(UserError, match="no batches"):
        recover(model, model, iter([]), steps=1)
