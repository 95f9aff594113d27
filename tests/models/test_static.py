"""The static student: hashed n-grams inside the model, saved and loaded as a Hugging Face model, exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from speedtrain.errors import UserError
from speedtrain.models.static import HASH_PRIME, build_static_student
from speedtrain.models.student import count_parameters

VOCAB, BUCKETS, LABELS = 300, 512, 4


def _model(ngram: int = 2, **kwargs):
    torch.manual_seed(0)
    model = build_static_student(vocab_size=VOCAB, num_labels=LABELS, hidden_size=16, ngram=ngram, buckets=BUCKETS,
                                 max_length=16, **kwargs).eval()
    torch.nn.init.normal_(model.embeddings.weight, std=1.0)  # logits of a trained model's size
    with torch.no_grad():
        model.embeddings.weight[0].zero_()  # the pad row stays 0
    return model


def _logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits


def test_grams_hash_bigrams_of_real_tokens_only():
    model = _model(ngram=2)
    ids = torch.tensor([[2, 7, 9, 3, 0]])  # [CLS] a b [SEP] [PAD]
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    rows, weights = (t[0].tolist() for t in model.grams(ids, mask))
    assert rows[:5] == [2, 7, 9, 3, 0] and weights[:5] == [1, 1, 1, 1, 0]
    expected = [(a * HASH_PRIME + b) % BUCKETS + VOCAB for a, b in [(2, 7), (7, 9), (9, 3)]]
    assert rows[5:8] == expected and weights[5:] == [1, 1, 1, 0, 0]  # no bigram across the padding


def test_logits_are_the_mean_of_the_rows_then_the_head():
    model = _model(ngram=3)
    ids = torch.tensor([[2, 7, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    table = model.embeddings.weight
    tri = [(a * HASH_PRIME + b) * HASH_PRIME + c for a, b, c in [(2, 7, 9), (7, 9, 3)]]
    rows = [2, 7, 9, 3, *[(a * HASH_PRIME + b) % BUCKETS + VOCAB for a, b in [(2, 7), (7, 9), (9, 3)]],
            *[t % BUCKETS + VOCAB for t in tri]]
    expected = model.classifier(table[rows].mean(0, keepdim=True))
    torch.testing.assert_close(_logits(model, ids, mask), expected.detach())


def test_one_token_has_no_ngrams():
    model = _model(ngram=3)
    ids = torch.tensor([[7]])
    rows, weights = model.grams(ids, torch.ones_like(ids))
    assert rows[0, 0] == 7 and weights.tolist() == [[1, 0, 0]]  # the bigram and trigram run past the end
    expected = model.classifier(model.embeddings.weight[[7]]).detach()
    torch.testing.assert_close(_logits(model, ids, torch.ones_like(ids)), expected)


@pytest.mark.parametrize("ngram,conv", [(1, 0), (2, 0), (3, 0), (2, 8)])
def test_padding_does_not_change_the_logits(ngram, conv):
    model = _model(ngram=ngram, conv_channels=conv)
    ids = torch.tensor([[2, 11, 12, 13, 3]])
    alone = _logits(model, ids, torch.ones_like(ids))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = (padded != 0).long()
    torch.testing.assert_close(_logits(model, padded, mask), alone)
    assert alone.shape == (1, LABELS)


def test_word_order_matters_with_bigrams_only():
    ids, swapped = torch.tensor([[2, 11, 12, 13, 3]]), torch.tensor([[2, 13, 12, 11, 3]])
    mask = torch.ones_like(ids)
    unigram, bigram = _model(ngram=1), _model(ngram=2)
    torch.testing.assert_close(_logits(unigram, ids, mask), _logits(unigram, swapped, mask))
    assert not torch.allclose(_logits(bigram, ids, mask), _logits(bigram, swapped, mask))


def test_convolution_reads_order_beyond_the_ngrams_and_joins_the_bag():
    """static_conv: ReLU(conv over the pieces' vectors), max over the text, beside the bag's mean, then the head."""
    model = _model(ngram=1, conv_channels=8, conv_kernel=3)
    ids, swapped = torch.tensor([[2, 11, 12, 13, 3]]), torch.tensor([[2, 13, 12, 11, 3]])
    mask = torch.ones_like(ids)
    assert not torch.allclose(_logits(model, ids, mask), _logits(model, swapped, mask))  # unigrams alone: equal
    vectors = model.embeddings.weight[ids[0]]  # (T, D)
    padded = torch.cat([torch.zeros(1, 16), vectors, torch.zeros(1, 16)])  # the convolution's zero padding
    windows = torch.stack([padded[t:t + 3].T.reshape(-1) for t in range(5)])  # (T, D * 3), channel-major like Conv1d
    maps = torch.relu(windows @ model.conv.weight.reshape(8, -1).T + model.conv.bias)  # (T, K)
    features = torch.cat([vectors.mean(0), maps.max(0).values])[None]
    torch.testing.assert_close(_logits(model, ids, mask), model.classifier(features).detach())
    assert model.classifier.in_features == 16 + 8


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_an_exports_copy_folds_the_filters_into_the_table_and_computes_the_same(tmp_path, kernel):
    """for_export(): each slot's filters applied to every piece's row once; the trained model is left as it was."""
    import onnx

    from speedtrain.export.onnx import export_onnx

    model = _model(ngram=2, conv_channels=8, conv_kernel=kernel)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    folded = model.for_export()
    assert folded is not model and model.conv_tables is None and folded.conv_tables.shape == (kernel, VOCAB + 1, 8)
    weight = model.conv.weight  # (K, D, k): slot j of piece v is weight[:, :, j] @ row v
    centre = weight[:, :, kernel // 2] @ model.embeddings.weight[42]
    torch.testing.assert_close(folded.conv_tables[kernel // 2, 42], centre)
    ids = torch.randint(5, VOCAB, (4, 12))
    mask = torch.ones_like(ids)
    mask[1:, 7:] = 0  # padded texts, padding written as the pad id and as a real piece
    ids[1, 7:] = 0
    torch.testing.assert_close(_logits(folded, ids, mask), _logits(model, ids, mask), atol=1e-5, rtol=1e-5)
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[name], value) for name, value in state.items())
    bag = _model(ngram=2)
    assert bag.for_export() is bag  # no convolution: nothing to fold
    export_onnx(model, tmp_path / "model.onnx", max_length=16)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert sum(op in ("MatMul", "Gemm", "FusedMatMul") for op in ops) == 2  # the bag's sum, the classifier: no filters


def test_save_and_load_with_auto_class(tmp_path):
    model = _model(id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(_logits(loaded, ids, mask), _logits(model, ids, mask))
    assert type(loaded).__name__ == "StaticForSequenceClassification" and loaded.config.id2label[3] == "d"
    assert count_parameters(model)["params_non_embedding"] == 16 * LABELS + LABELS  # the head only


def test_weighted_pooling_starts_as_the_mean_and_learns_an_importance_per_row():
    mean, weighted = _model(ngram=2), _model(ngram=2, pooling="weighted")
    assert set(weighted.load_state_dict(mean.state_dict(), strict=False).missing_keys) == {"importance.weight"}
    ids = torch.tensor([[2, 7, 9, 3, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(_logits(weighted, ids, mask), _logits(mean, ids, mask))  # importance 0: e^0 = 1
    with torch.no_grad():
        weighted.importance.weight[7] = 2.0  # piece 7 counts e^2 times
        weighted.importance.weight[3] = 50.0  # clamped to e^4
    rows = [2, 7, 9, 3, *[(a * HASH_PRIME + b) % BUCKETS + VOCAB for a, b in [(2, 7), (7, 9), (9, 3)]]]
    w = torch.ones(len(rows))
    w[1], w[3] = torch.e ** 2, torch.e ** 4
    table = weighted.embeddings.weight[rows]
    expected = weighted.classifier((w[:, None] * table).sum(0, keepdim=True) / w.sum())
    torch.testing.assert_close(_logits(weighted, ids, mask), expected.detach())
    assert "importance.weight" in dict(weighted.named_parameters())


@pytest.mark.parametrize("pooling,conv", [("mean", 0), ("weighted", 0), ("weighted", 8)])
def test_onnx_int8_fp16_and_pt2_match_eager(tmp_path, pooling, conv):
    from speedtrain.bundle.runtime import OrtRunner, TorchRunner
    from speedtrain.export.onnx import export_onnx, to_fp16
    from speedtrain.export.pt2 import export_pt2
    from speedtrain.export.quantize import quantize_int8

    model = _model(ngram=3, pooling=pooling, conv_channels=conv)
    import torch._inductor  # noqa: F401 (aoti_load_package)

    if pooling == "weighted":
        torch.nn.init.normal_(model.importance.weight, std=1.0)
    export_onnx(model, tmp_path / "model.onnx", max_length=16)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    to_fp16(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")
    export_pt2(model, tmp_path / "model.pt2", max_length=16)
    rng = np.random.default_rng(0)
    for batch, length in [(1, 1), (1, 16), (5, 9)]:  # shapes the exporter never saw, down to one token
        ids = rng.integers(5, VOCAB, size=(batch, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1:, length // 2 + 1:] = 0
        ids *= mask
        expected = _logits(model, ids, mask).numpy()
        np.testing.assert_allclose(OrtRunner(tmp_path / "model.onnx", 1)(ids, mask), expected, atol=1e-4)
        np.testing.assert_allclose(OrtRunner(tmp_path / "model.fp16.onnx", 1)(ids, mask), expected, atol=5e-2)
        int8 = OrtRunner(tmp_path / "model.int8.onnx", 1)(ids, mask)
        assert np.abs(int8 - expected).max() <= 0.1 * np.abs(expected).max()
        pt2 = TorchRunner(torch._inductor.aoti_load_package(str(tmp_path / "model.pt2")), 1)(ids, mask)
        np.testing.assert_allclose(pt2, expected, atol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"ngram": 4}, "model.ngram=4 must be 1, 2 or 3"),
    ({"buckets": 0}, "model.buckets=0 must be positive"),
    ({"hidden_size": 0}, "model.hidden_size=0 must be positive"),
    ({"head_hidden": -1}, "model.head_hidden=-1 must be >= 0"),
    ({"pooling": "max"}, "model.pooling='max' must be 'mean' or 'weighted'"),
    ({"conv_channels": 8, "conv_kernel": 2}, "model.conv_kernel=2: .* an odd number of pieces"),
])
def test_bad_sizes_one_clear_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_static_student(vocab_size=VOCAB, num_labels=LABELS, **kwargs)


def test_attention_switches_leave_it_unchanged():
    """trainer.speed.attention sets the student's attention implementation: a model without attention accepts any."""
    model = _model()
    ids = torch.randint(5, VOCAB, (2, 7))
    before = _logits(model, ids, torch.ones_like(ids))
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        torch.testing.assert_close(_logits(model, ids, torch.ones_like(ids)), before)


@pytest.mark.parametrize("pooling,conv,sparse", [("mean", 0, False), ("weighted", 0, True), ("weighted", 8, True)])
def test_training_forward_computes_what_evaluation_does_and_the_same_gradients(pooling, conv, sparse):
    """The training forward (each distinct row looked up once, one embedding_bag) gives the evaluation forward's
    logits; with sparse_grad the tables' gradients are sparse, one entry per touched row, and equal the dense ones."""
    dense = _model(pooling=pooling, conv_channels=conv, dropout=0.0)
    model = _model(pooling=pooling, conv_channels=conv, dropout=0.0, sparse_grad=sparse)
    model.load_state_dict(dense.state_dict())
    if pooling == "weighted":
        with torch.no_grad():
            for m in (dense, model):
                m.importance.weight.copy_(torch.linspace(-5.0, 5.0, m.importance.weight.shape[0]).unsqueeze(1))
    ids = torch.tensor([[2, 7, 9, 7, 2, 7], [11, 12, 0, 0, 0, 0], [5, 5, 5, 6, 0, 0]])  # repeats and padding
    mask = (ids != 0).long()
    labels = torch.tensor([0, 1, 3])
    eval_logits = _logits(dense, ids, mask)
    dense.train()
    model.train()
    out_dense = dense(input_ids=ids, attention_mask=mask, labels=labels)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits.detach(), eval_logits)
    out_dense.loss.backward()
    out.loss.backward()
    grad = model.embeddings.weight.grad
    assert grad.is_sparse is sparse
    if sparse:  # each distinct row once: pieces (not the pad row) + a bigram at every position (padding's weigh 0)
        rows = set(ids.flatten().tolist()) - {0} | {(a * HASH_PRIME + b) % BUCKETS + VOCAB for r in ids.tolist()
                                              for a, b in zip(r, [*r[1:], 0])}
        assert sorted(grad._indices()[0].tolist()) == sorted(rows)
        grad = grad.to_dense()
    torch.testing.assert_close(grad, dense.embeddings.weight.grad)
    if pooling == "weighted":
        imp = model.importance.weight.grad
        torch.testing.assert_close(imp.to_dense() if sparse else imp, dense.importance.weight.grad)
    assert grad[0].abs().sum() == 0  # the pad row never learns
