"""The model2vec-style peer: its table is the teacher's (each piece read alone), cached by the teacher's files, and
a text is the SIF-weighted mean of its pieces' rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from speedtrain.bench import static_peer
from speedtrain.bench.static_peer import StaticLogReg, teacher_digest, teacher_piece_vectors
from speedtrain.config import default_cache_dir
from speedtrain.models.static_init import piece_vectors
from speedtrain.models.teacher import load_classifier, load_tokenizer

WORDS = ["apple", "banana", "hammer", "boot"]


@pytest.fixture
def cache(tiny_teacher_dir):
    """The session's speedtrain cache (the frontier test's too), holding the tiny teacher's piece vectors."""
    folder = default_cache_dir()
    teacher_piece_vectors(tiny_teacher_dir, folder)  # computed once per test process
    return folder


def test_piece_vectors_are_the_teachers_own_and_cached_by_its_weights(tiny_teacher_dir, cache, tmp_path,
                                                                        monkeypatch):
    tokenizer = load_tokenizer(str(tiny_teacher_dir))
    teacher = load_classifier(str(tiny_teacher_dir), 2, fine_tuned=True)
    ids = tokenizer.convert_tokens_to_ids(WORDS)
    monkeypatch.setattr("speedtrain.models.static_init.piece_vectors", _no_compute)
    vectors, special = teacher_piece_vectors(tiny_teacher_dir, cache)  # from the cache: nothing computed
    assert vectors.shape == (len(tokenizer), 32) and special.sum() == len(tokenizer.all_special_ids)
    np.testing.assert_allclose(vectors[ids], piece_vectors(teacher, tokenizer, WORDS), atol=1e-5)
    assert not vectors[special].any() and vectors[~special].any(1).all()
    monkeypatch.undo()

    changed = tmp_path / "changed"  # the same teacher, apple's embedding moved: a new cache entry, apple's row only
    shutil.copytree(tiny_teacher_dir, changed)
    teacher.bert.embeddings.word_embeddings.weight.data[ids[0]] += torch.linspace(-1, 1, 32)  # LayerNorm keeps it
    teacher.save_pretrained(changed)
    moved, _ = teacher_piece_vectors(changed, cache)
    digests = teacher_digest(tiny_teacher_dir), teacher_digest(changed)
    assert digests[0] != digests[1] and all((cache / "peers" / "static_lr" / f"{d}.npy").is_file() for d in digests)
    assert not np.allclose(moved[ids[0]], vectors[ids[0]], atol=1e-3)
    np.testing.assert_allclose(moved[ids[1:]], vectors[ids[1:]], atol=1e-5)  # each piece is read alone


def _no_compute(*args, **kwargs):
    raise AssertionError("the piece vectors were computed again instead of read from the cache")


def test_a_text_is_the_mean_of_its_pieces_rows(tiny_teacher_dir, cache, monkeypatch):
    """apple's vector zeroed: "apple" scores as an empty text (the bias), and "apple banana" half of "banana"."""
    real, tokenizer = teacher_piece_vectors, load_tokenizer(str(tiny_teacher_dir))
    apple = tokenizer.convert_tokens_to_ids("apple")

    def without_apple(folder, cache_dir=None):
        vectors, special = real(folder, cache_dir)
        vectors = vectors.copy()
        vectors[apple] = 0.0
        return vectors, special

    monkeypatch.setattr(static_peer, "teacher_piece_vectors", without_apple)
    texts = [f"{a} {w}" for w in WORDS for a in ("fresh", "red", "large", "small", "old")]
    labels = [i for i in range(len(WORDS)) for _ in range(5)]
    peer = StaticLogReg(tiny_teacher_dir, c_grid=(1.0,), cache_dir=cache).fit(texts, labels, texts, labels)
    assert peer.choice == {"C": 1.0, "dims": 32, "pieces": 30522} and peer.val_acc > 50
    scores = peer.decision(["apple", "", "banana", "apple banana", "banana banana"])
    np.testing.assert_allclose(scores[0], peer.bias, atol=1e-6)
    np.testing.assert_allclose(scores[1], peer.bias, atol=1e-6)
    np.testing.assert_allclose(scores[3] - peer.bias, (scores[2] - peer.bias) / 2, atol=1e-5)
    np.testing.assert_allclose(scores[4], scores[2], atol=1e-5)
    special = tokenizer.all_special_ids  # the [CLS] and [SEP] of every text add and count nothing
    assert not peer.table[special].any() and not peer.counted[special].any()
    batch = peer.predict(["banana", "hammer", "boot"])
    assert batch.shape == (3,) and [int(peer.predict([t])[0]) for t in ("banana", "hammer", "boot")] == list(batch)
