"""Peer baselines: they learn a tiny data set, their measurement has every key, missing packages are clear."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

from speedtrain.bench import peers
from speedtrain.bench.latency import BenchOptions
from speedtrain.config import default_cache_dir
from speedtrain.errors import UserError

TINY_BENCH = BenchOptions(batch_sizes=[1, 8], warmup=2, min_reps=20, min_time_s=0.05, throughput_time_s=0.02)


@pytest.fixture(scope="module")
def splits() -> dict:
    """72 made-up product titles, 3 classes told apart by their nouns, split 48/12/12 (every class in each)."""
    nouns = [["apple", "banana", "cherry", "mango", "pear", "plum"],
             ["hammer", "wrench", "drill", "saw", "chisel", "pliers"],
             ["sneaker", "boot", "sandal", "loafer", "slipper", "clog"]]
    adjectives = ["fresh", "red", "large", "small"]
    rows = [(f"{a} {n}", label) for label, words in enumerate(nouns) for n in words for a in adjectives]
    random.Random(0).shuffle(rows)
    part = {"train": rows[:48], "validation": rows[48:60], "test": rows[60:]}
    return {name: {"text": [t for t, _ in r], "label": [y for _, y in r]} for name, r in part.items()}


@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peer_learns_the_classes_and_is_measured(name, splits, tmp_path, tiny_teacher_dir):
    # a random 1-layer teacher (its pieces differ all the same); its vectors cached in the session's cache
    static = {"static_lr": {"teacher_dir": tiny_teacher_dir, "cache_dir": default_cache_dir()}}
    (result,) = peers.fit_and_measure([name], splits, TINY_BENCH, work_dir=tmp_path, peer_kwargs=static)
    assert result["model"] == name and result["kind"] == "peer"
    assert result["test_acc"] >= 90 and result["val_acc"] >= 75
    for key in ("p50_ms", "p99_ms", "texts_per_s", "fit_s", "size_mb", "params"):
        assert result[key] > 0, key
    assert set(result["throughput"]) == {"1", "8"} and all(v > 0 for v in result["throughput"].values())
    assert result["batch"] == 8 and result["texts_per_s"] == result["throughput"]["8"]
    assert result["choice"]
    assert list(tmp_path.iterdir()) == []  # fastText's training file is gone


def test_fasttext_predicts_raw_texts_and_keeps_its_file_in_the_work_dir(splits, tmp_path, monkeypatch):
    seen = []
    train = peers.require("fasttext").train_supervised

    def spy(path, **kwargs):
        seen.append(path)
        return train(path, **kwargs)

    monkeypatch.setattr("fasttext.train_supervised", spy)
    peer = peers.FastTextPeer(epochs=(25,), lrs=(0.5,), work_dir=tmp_path)
    peer.fit(splits["train"]["text"], splits["train"]["label"], splits["validation"]["text"],
             splits["validation"]["label"])
    assert seen and all(p.startswith(str(tmp_path)) for p in seen)
    predicted = peer.predict(["FRESH\tMango\n", "   ", "large  hammer"])  # case, tabs, newlines, empty
    assert predicted.dtype.kind == "i" and predicted.shape == (3,) and predicted[0] == 0 and predicted[2] == 1


def test_batch_one_runs_on_one_blas_thread_and_the_limit_is_lifted_after(splits, monkeypatch):
    from threadpoolctl import threadpool_info

    seen = {}

    def fake_benchmark(make_predict, texts, options):
        make_predict(options.latency_threads)
        seen["latency"] = {pool["num_threads"] for pool in threadpool_info()}
        make_predict(options.threads)
        seen["throughput"] = {pool["num_threads"] for pool in threadpool_info()}
        return {"latency": {"p50_ms": 1.0, "p99_ms": 2.0}, "throughput": {"1": 10.0}}

    before = {pool["num_threads"] for pool in threadpool_info()}
    monkeypatch.setattr(peers, "benchmark_end_to_end", fake_benchmark)
    peer = peers.TfidfLogReg(c_grid=(10,)).fit(splits["train"]["text"], splits["train"]["label"],
                                                splits["validation"]["text"], splits["validation"]["label"])
    peers.measure_peer(peer, splits["test"]["text"], splits["test"]["label"], TINY_BENCH)
    assert seen["latency"] == {1}
    assert seen["throughput"] == before == {pool["num_threads"] for pool in threadpool_info()}


def test_missing_fasttext_is_a_user_error_and_skipped_in_a_list(splits, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "fasttext", None)  # import fasttext raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[peers\]"'):
        peers.build_peer("fasttext")
    results = peers.fit_and_measure(["fasttext"], splits, TINY_BENCH)
    assert results == [] and "peer fasttext skipped" in caplog.text


def test_unknown_peer_is_a_user_error(splits):
    with pytest.raises(UserError, match=r"unknown peers \['svm'\]; the peers are \['fasttext', 'static_lr', "
                                        r"'tfidf_lr'\]"):
        peers.fit_and_measure(["tfidf_lr", "svm"], splits, TINY_BENCH)


def test_static_lr_without_a_teacher_is_skipped(splits, tmp_path, caplog):
    assert peers.fit_and_measure(["static_lr"], splits, TINY_BENCH) == []
    missing = {"static_lr": {"teacher_dir": tmp_path / "gone"}}
    assert peers.fit_and_measure(["static_lr"], splits, TINY_BENCH, peer_kwargs=missing) == []
    assert caplog.text.count("peer static_lr skipped: static_lr needs the fine-tuned teacher's folder") == 2


def test_accuracy_is_in_points():
    assert peers.accuracy(np.array([1, 2, 3, 4]), [1, 2, 0, 4]) == 75.0


def test_fasttext_tries_smaller_rates_when_its_whole_grid_diverges(splits, tmp_path, monkeypatch):
    """fastText's "Encountered NaN." at every (epochs, lr): the grid again at a tenth of the rates, not an error."""
    train = peers.require("fasttext").train_supervised
    tried = []

    def diverging(path, lr, **kwargs):
        tried.append(lr)
        if lr >= 0.5:
            raise RuntimeError("Encountered NaN.")
        return train(path, lr=lr, **kwargs)

    monkeypatch.setattr("fasttext.train_supervised", diverging)
    peer = peers.FastTextPeer(epochs=(25,), lrs=(0.5, 1.0), work_dir=tmp_path)
    peer.fit(splits["train"]["text"], splits["train"]["label"], splits["validation"]["text"],
             splits["validation"]["label"])
    assert tried == [0.5, 1.0, 0.05, 0.1] and peer.choice["lr"] in (0.05, 0.1)
    assert peer.predict(["large hammer"]).shape == (1,)
    monkeypatch.setattr("fasttext.train_supervised", lambda path, **kwargs: (_ for _ in ()).throw(
        RuntimeError("Encountered NaN.")))
    with pytest.raises(UserError, match=r"fastText failed for every setting .* and at a tenth of those rates"):
        peers.FastTextPeer(epochs=(25,), lrs=(0.5,), work_dir=tmp_path).fit(
            splits["train"]["text"], splits["train"]["label"], splits["validation"]["text"],
            splits["validation"]["label"])
    # in a list of peers (the frontier's), a peer whose every fit diverges is skipped and the others still count
    results = peers.fit_and_measure(["fasttext", "tfidf_lr"], splits, TINY_BENCH, work_dir=tmp_path)
    assert [r["model"] for r in results] == ["tfidf_lr"]
