"""Predictor: the same predictions as the model, in order, cached by normalised text, with clear input errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import AutoTokenizer

from speedtrain.bundle.predictor import Predictor
from speedtrain.bundle.runtime import TextEncoder, load_runner
from speedtrain.errors import UserError


@pytest.fixture(scope="module")
def texts(tiny_bundle):
    return (tiny_bundle / "benchmark_texts.txt").read_text().splitlines()[:40]


def test_tokenization_is_the_training_one(tiny_bundle, texts):
    hf = AutoTokenizer.from_pretrained(tiny_bundle)
    batch = [*texts, "  Live   HORSES, for breeding ", "word " * 100]
    ids, mask = TextEncoder(tiny_bundle, 32)(batch)
    expected = hf(batch, truncation=True, max_length=32, padding=True, return_tensors="np")
    assert (ids == expected["input_ids"]).all() and (mask == expected["attention_mask"]).all()
    assert ids.shape[1] == 32  # the long text is cut at the training length


def test_the_ascii_fast_path_gives_the_normalizer_s_ids(tiny_bundle, texts):
    """Printable ASCII batches skip the BERT normalizer (str.lower instead); any other text takes the full path."""
    encoder = TextEncoder(tiny_bundle, 32)
    assert encoder._plain is not None
    hard = ["Café crème BRÛLÉE", "tab\tseparated\nlines", "中文 text", "ctrl\x07char", "ＦＵＬＬ width"]
    for batch in ([*texts, "MiXeD Case, punct.!? 1/2-inch (x) [y] {z} #42 a_b"], hard, [texts[0], *hard]):
        expected = AutoTokenizer.from_pretrained(tiny_bundle)(batch, truncation=True, max_length=32)["input_ids"]
        assert encoder.encode(batch) == expected


def test_predict_matches_the_model_in_order(tiny_bundle, texts):
    predictor = Predictor.load(tiny_bundle, variant="onnx", batch_size=8, cache_size=0)
    mixed = [texts[3], texts[0], "x", texts[3], *texts[5:30]]  # lengths mixed, a duplicate: several batches
    probs = predictor.predict_proba(mixed)
    logits = load_runner(tiny_bundle, "onnx")(*TextEncoder(tiny_bundle, 32)(mixed))
    assert probs.shape == logits.shape and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_allclose(probs[0], probs[3], atol=1e-6)
    out = predictor.predict(mixed)
    assert [o["label"] for o in out] == [predictor.labels[i] for i in logits.argmax(1)]
    assert all(abs(o["score"] - p.max()) < 1e-6 for o, p in zip(out, probs))


def test_fast_variant_and_async(tiny_bundle, texts):
    import json

    predictor = Predictor.load(tiny_bundle)
    assert predictor.variant == json.loads((tiny_bundle / "speedtrain.json").read_text())["fast"]
    assert asyncio.run(predictor.apredict(texts[:5])) == predictor.predict(texts[:5])


def test_cache_counts_hits_by_normalised_text(tiny_bundle, texts):
    predictor = Predictor.load(tiny_bundle, variant="onnx", cache_size=3)
    first = predictor.predict(["Live horses", "steel screws"])
    assert predictor.cache_info() == {"hits": 0, "misses": 2, "size": 2, "capacity": 3}
    again = predictor.predict(["  live   HORSES ", "steel screws"])  # the tokenizer lowercases: the same input
    assert again == first and predictor.cache_info()["hits"] == 2
    predictor.predict(["a", "b", "c"])  # LRU: room for 3
    assert predictor.cache_info()["size"] == 3
    predictor.predict(["live horses"])
    assert predictor.cache_info()["misses"] == 6  # evicted


@pytest.mark.parametrize("bad,message", [
    ("live horses", "not one string"),
    ([], "texts is empty"),
    (["ok", 3], r"texts\[1\] is int"),
    ({"text": "x"}, "must be a list of strings"),
])
def test_bad_input(tiny_bundle, bad, message):
    with pytest.raises(UserError, match=message):
        Predictor.load(tiny_bundle, variant="onnx").predict(bad)


def test_workers_run_batches_at_once_and_split_a_single_batch_in_order(tiny_bundle, texts):
    """workers > 1: the batches of a call run concurrently (one batch is split), same probabilities, same order."""
    runner = load_runner(tiny_bundle, "onnx", 1)
    encoder = TextEncoder(tiny_bundle, 32)
    calls: list[int] = []

    def counted(ids, mask):
        calls.append(len(ids))
        return runner(ids, mask)

    one = Predictor(runner, encoder, ["a", "b"], cache_size=0)
    many = Predictor(counted, encoder, ["a", "b"], cache_size=0, workers=3)
    same = ["live horses"] * 7  # one batch of 7 equal texts: split into 3 parts
    np.testing.assert_allclose(many.probabilities(same), one.probabilities(same), atol=1e-6)
    assert sorted(calls) == [2, 2, 3]
    calls.clear()
    mixed = [texts[3], texts[0], "x", *texts[5:30]]
    np.testing.assert_allclose(many.probabilities(mixed), one.probabilities(mixed), atol=1e-6)
    assert sum(calls) == len(mixed) and len(calls) >= 3
    with pytest.raises(UserError, match="workers=0"):
        Predictor(runner, encoder, ["a", "b"], workers=0)
