"""What the teacher knows beyond the labelled texts: a static student that starts from the teacher's piece vectors
(``model.init=teacher``) and unlabelled texts the teacher labels (``distill.unlabeled``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from speedtrain.builders import build_datamodule, build_model
from speedtrain.config import compose_config
from speedtrain.data.sources import unlabeled
from speedtrain.distill import logit_cache
from speedtrain.distill.losses import KDLoss
from speedtrain.errors import UserError
from speedtrain.models.static_init import pca, sif_log_weights
from speedtrain.models.teacher import load_classifier, load_tokenizer
from speedtrain.pipeline import run
from speedtrain.teacher_stage import prepare_distillation
from tests.conftest import TINY_RUN

STATIC = ["model=static", "model.hidden_size=16", "model.buckets=2048", "tokenizer.vocab_size=600", "distill=logits",
          "teacher.max_length=24"]


def test_static_table_rows_are_the_teachers_piece_vectors(tmp_path, fine_tuned_teacher):
    cfg = compose_config([*TINY_RUN, *STATIC, "+experiment=distill", f"teacher.path={fine_tuned_teacher}",
                          "distill.augment.copies=0", "model.init_importance=sif", f"paths.output_dir={tmp_path}"])
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    init = prepare_distillation(cfg, datamodule, KDLoss(), str(fine_tuned_teacher), {})["init"]
    model = build_model(cfg, datamodule)
    random_rows = model.embeddings.weight.detach().clone()
    init(model)
    rows = model.embeddings.weight.detach().numpy()
    vocab = len(datamodule.tokenizer)

    # the teacher reads each piece alone; its vector is the mean of the last states over the piece's own tokens
    teacher, tok = load_classifier(str(fine_tuned_teacher), datamodule.num_labels, fine_tuned=True), load_tokenizer(
        str(fine_tuned_teacher))
    pieces = datamodule.tokenizer.convert_ids_to_tokens(list(range(vocab)))
    with torch.no_grad():
        expected = []
        for piece in pieces:
            ids = [tok.convert_tokens_to_ids(piece)] if piece in tok.get_vocab() else tok(
                piece.removeprefix("##"), add_special_tokens=False)["input_ids"]
            states = teacher(input_ids=torch.tensor([[tok.cls_token_id, *ids, tok.sep_token_id]]),
                             output_hidden_states=True).hidden_states[-1][0, 1:-1]
            expected.append(states.mean(0).numpy())
    expected = np.stack(expected)
    pad = datamodule.tokenizer.pad_token_id
    expected[pad] = 0
    table = pca(expected, 16, rows=np.flatnonzero(expected.any(1)))
    scale = np.linalg.norm(rows[:vocab]) / np.linalg.norm(table)
    np.testing.assert_allclose(rows[:vocab], table * scale, atol=1e-4)  # the PCA of the teacher's vectors, scaled
    assert not np.allclose(rows[:vocab], random_rows[:vocab].numpy(), atol=1e-3)
    assert not rows[vocab:].any() and not rows[pad].any()  # hashed n-gram rows and padding start at zero
    # SIF importances: a piece in many texts weighs less than a rare one
    counts = np.bincount(np.concatenate([np.asarray(r) for r in datamodule.encoded["train"]["input_ids"]]),
                         minlength=vocab)
    counts[datamodule.tokenizer.all_special_ids] = 0
    importance = model.importance.weight.detach().numpy()[:, 0]
    words = [i for i in range(vocab) if i not in datamodule.tokenizer.all_special_ids]
    np.testing.assert_allclose(importance[words], np.clip(sif_log_weights(counts)[words], -4, 4), atol=1e-6)
    assert importance[max(words, key=counts.__getitem__)] < importance[min(words, key=counts.__getitem__)]


def test_unlabeled_texts_from_files(tmp_path):
    pd.DataFrame({"body": ["a b", " ", "c", None]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"text": ["p q", "r"]}).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text('{"text": "x y"}\n{"text": "z"}\n')
    (tmp_path / "t.txt").write_text("one text\n\nanother text\n")
    assert unlabeled(str(tmp_path / "t.csv"), column="body") == ["a b", "c"]
    assert unlabeled(str(tmp_path / "t.parquet")) == ["p q", "r"]
    assert unlabeled(str(tmp_path / "t.jsonl"), limit=1) == ["x y"]
    assert unlabeled(str(tmp_path / "t.txt")) == ["one text", "another text"]
    with pytest.raises(UserError, match=r"distill.unlabeled_column='text' is not a column .* its columns are \['body'\]"):
        unlabeled(str(tmp_path / "t.csv"))
    (tmp_path / "blank.csv").write_text("text\n\" \"\n")
    with pytest.raises(UserError, match="holds no text"):
        unlabeled(str(tmp_path / "blank.csv"))


def test_distil_with_unlabeled_texts(make_cfg, tmp_path, fine_tuned_teacher, monkeypatch):
    """The teacher labels the unlabelled texts (cached), they join the training split weighted, minus any text the
    data already has."""
    texts = [f"{kind} of {animal} for sale" for kind in ("fillets", "frozen meat", "live", "dried skins")
             for animal in ("bovine animals", "sheep", "goats", "swine", "fish")]

    def distill(out, *extra):
        cfg = compose_config([*TINY_RUN, *STATIC, "+experiment=distill", f"teacher.path={fine_tuned_teacher}",
                              "distill.augment.copies=0", f"distill.unlabeled={tmp_path / 'bare.txt'}",
                              f"paths.output_dir={tmp_path / out}", *extra])
        run(cfg)
        return cfg, json.loads((tmp_path / out / "metrics.json").read_text())

    base = compose_config([*TINY_RUN, *STATIC, "+experiment=distill", f"paths.output_dir={tmp_path}"])
    datamodule = build_datamodule(base)
    datamodule.prepare()
    known = datamodule.splits["test"]["text"][0]
    (tmp_path / "bare.txt").write_text("\n".join([*texts, texts[0], known]) + "\n")  # a repeat and a test text
    _, metrics = distill("first", "distill.unlabeled_weight=0.5")
    assert metrics["distill/unlabeled"] == len(texts)
    assert metrics["distill/transfer_set"] == metrics["data"]["train"] + len(texts)

    seen = set()
    original = KDLoss.forward

    def spy(self, student, teacher, labels, weights=None):
        seen.update(weights.unique().tolist())  # None (no weights) fails here
        return original(self, student, teacher, labels, weights)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    monkeypatch.setattr(KDLoss, "forward", spy)
    monkeypatch.setattr(logit_cache, "teacher_outputs", no_teacher)
    _, again = distill("again", "distill.unlabeled_weight=0.5")
    assert again["teacher/logits_from_cache"] is True and again["distill/unlabeled"] == len(texts)
    assert seen == {0.5, 1.0}  # labelled inputs weigh 1, the unlabelled ones distill.unlabeled_weight


def test_weighted_kd_loss_is_the_weighted_mean_of_rows():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    loss = KDLoss(alpha=0.5, temperature=2.0)
    assert torch.allclose(loss(s, t, y, torch.ones(6)).loss, loss(s, t, y).loss, atol=1e-6)
    dropped = loss(s, t, y, torch.tensor([1.0, 1, 1, 1, 0, 0])).loss
    assert torch.allclose(dropped, loss(s[:4], t[:4], y[:4]).loss, atol=1e-6)


def test_unlabeled_texts_from_the_hub(monkeypatch):
    """A name that is not a file is a Hub dataset (no network here: ``load_dataset`` is replaced)."""
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None, cache_dir=None):
        calls.append((name, config, split))
        if name != "user/reviews":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.Dataset.from_dict({"review": ["good film", "", "bad film"], "stars": [5, 1, 1]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert unlabeled("user/reviews", column="review", split="unsupervised", config="en") == ["good film", "bad film"]
    assert calls == [("user/reviews", "en", "unsupervised")]
    with pytest.raises(UserError, match=r"distill.unlabeled_column='text' is not a column .*\['review', 'stars'\]"):
        unlabeled("user/reviews")
    with pytest.raises(UserError, match="distill.unlabeled='nobody/nothing' is neither a file nor a Hugging Face Hub"):
        unlabeled("nobody/nothing")
