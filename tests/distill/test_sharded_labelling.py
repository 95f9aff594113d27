"""Teacher labelling across processes (issue 25): two gloo ranks share the shards, each text labelled once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

TEXTS = [f"product {i} of {'steel ' * (i % 7)}and {'frozen fish ' * (i % 3)}kind {i % 11}" for i in range(53)]


def _teacher(folder: Path):
    """A tiny BERT classifier and a WordPiece tokenizer, saved in ``folder`` (every rank loads the same files)."""
    from transformers import BertConfig, BertForSequenceClassification

    from speedtrain.data.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(TEXTS, vocab_size=120, max_length=16)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _recording(batch_outputs, labelled: list[str]):
    """``batch_outputs`` that also appends the texts it labels to ``labelled``."""

    def spy(teacher, tokenizer, texts, max_length, layers):
        labelled.extend(texts)
        return batch_outputs(teacher, tokenizer, texts, max_length, layers)

    return spy


def _rank(rank: int, world: int, root: str) -> None:
    """One process: join the group, label through the run's cache, write what it labelled and got."""
    import speedtrain.distill.logit_cache as logit_cache
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = Path(root)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'group'}", rank=rank,
                                         world_size=world)
    labelled: list[str] = []
    logit_cache._batch_outputs = _recording(logit_cache._batch_outputs, labelled)
    logit_cache.SHARD_TEXTS = 8  # 7 shards of 53 texts: 4 for rank 0, 3 for rank 1
    teacher = AutoModelForSequenceClassification.from_pretrained(root / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(root / "teacher")
    outputs, cached = logit_cache.cached_teacher_outputs(root / "teacher", teacher, tokenizer, TEXTS, 16,
                                                         root / "cache", layers=(1,))
    np.save(root / f"logits-{rank}.npy", outputs["logits"])
    (root / f"labelled-{rank}.json").write_text(json.dumps({"texts": labelled, "cached": cached}))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_two_gloo_ranks_label_every_text_exactly_once_and_both_get_all_outputs(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from speedtrain.distill.logit_cache import teacher_outputs

    _teacher(tmp_path / "teacher")
    torch.multiprocessing.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    done = [json.loads((tmp_path / f"labelled-{r}.json").read_text()) for r in (0, 1)]
    assert not done[0]["cached"] and not done[1]["cached"]
    assert sorted(done[0]["texts"] + done[1]["texts"]) == sorted(TEXTS)  # every text once, by one rank
    assert len(done[0]["texts"]) == 29 and len(done[1]["texts"]) == 24  # shards 0, 2, 4, 6 (5 texts) and 1, 3, 5
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    alone = teacher_outputs(teacher, AutoTokenizer.from_pretrained(tmp_path / "teacher"), TEXTS, 16)["logits"]
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"logits-{rank}.npy"), alone, atol=1e-5)
    (final,) = (tmp_path / "cache" / "logits").glob("*.npz")  # written once, by rank 0; the shards are gone
    assert not list((tmp_path / "cache" / "logits").glob("*.parts"))
    with np.load(final) as saved:
        np.testing.assert_allclose(saved["logits"], alone, atol=1e-5)
        assert saved["hidden"].shape == (len(TEXTS), 1, 16)


def _lightning_rank(rank: int, world: int, root: str, port: int) -> None:
    """One process of a 2-process DDP job started from outside (as torchrun or SLURM do): label through Lightning's
    predict loop with a DDP Trainer, record which texts this rank labelled."""
    import os

    import pytorch_lightning as pl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import speedtrain.distill.labelling as labelling
    import speedtrain.distill.logit_cache as logit_cache

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    root = Path(root)
    labelled: list[str] = []
    labelling._batch_outputs = _recording(labelling._batch_outputs, labelled)
    logit_cache.SHARD_TEXTS = 8

    def make_trainer(callbacks):
        return pl.Trainer(accelerator="cpu", devices=world, strategy="ddp", callbacks=callbacks, logger=False,
                          enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)

    teacher = AutoModelForSequenceClassification.from_pretrained(root / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(root / "teacher")
    outputs, cached = logit_cache.cached_teacher_outputs(root / "teacher", teacher, tokenizer, TEXTS, 16,
                                                         root / "cache", make_trainer=make_trainer)
    np.save(root / f"logits-{rank}.npy", outputs["logits"])
    (root / f"labelled-{rank}.json").write_text(json.dumps({"texts": labelled, "cached": cached}))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_lightning_predict_loop_shares_the_shards_between_ranks_and_skips_finished_ones(tmp_path):
    """make_trainer: the predict loop of a DDP Trainer labels; shards a stopped run left are read, not redone."""
    import hashlib
    import socket

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from speedtrain.distill.logit_cache import _save_npz, shard_path, teacher_outputs
    from speedtrain.models.digest import weights_digest

    _teacher(tmp_path / "teacher")
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    alone = teacher_outputs(teacher, tokenizer, TEXTS, 16)
    # what a stopped run left: shards 0 and 3 (8 texts each, of the length-sorted order) in the run's shard folder
    h = hashlib.sha256(f"{weights_digest(tmp_path / 'teacher')}/16/{len(TEXTS)}/()".encode())
    for text in TEXTS:
        h.update(text.encode())
        h.update(b"\0")
    parts = tmp_path / "cache" / "logits" / f"{h.hexdigest()[:20]}.parts"
    order = sorted(range(len(TEXTS)), key=lambda i: len(TEXTS[i]))
    for number in (0, 3):
        rows = order[number * 8 : number * 8 + 8]
        _save_npz(shard_path(parts, number), {"logits": alone["logits"][rows]})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_lightning_rank, args=(2, str(tmp_path), port), nprocs=2, join=True)
    done = [json.loads((tmp_path / f"labelled-{r}.json").read_text()) for r in (0, 1)]
    reused = {TEXTS[i] for n in (0, 3) for i in order[n * 8 : n * 8 + 8]}
    assert sorted(done[0]["texts"] + done[1]["texts"]) == sorted(set(TEXTS) - reused)  # the rest, each once
    assert len(done[0]["texts"]) == 8 + 8 + 5 and len(done[1]["texts"]) == 8 + 8  # shards 0*, 2, 4, 6 | 1, 3*, 5
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"logits-{rank}.npy"), alone["logits"], atol=1e-5)
    assert not parts.exists() and len(list((tmp_path / "cache" / "logits").glob("*.npz"))) == 1


@pytest.mark.slow  # two 2-process DDP runs on the CPU: ~2-3 min on 2 cores (run: pytest -m slow)
def test_a_ddp_distillation_run_labels_the_transfer_set_across_its_ranks(tmp_path, tiny_teacher_dir):
    """trainer=ddp over gloo: both ranks label through Lightning's predict loop, each its share, and the run ends;
    stage 1 fine-tuned in the run (the processes started by its fit), then with the teacher cached (started by the
    labelling itself)."""
    from tests.conftest import TINY_RUN
    from tests.test_train import _cli

    for run, seed in (("first", 1), ("cached", 2)):  # another augmentation seed: new transfer-set variants to label
        done = _cli(*TINY_RUN, "+experiment=distill", "model=static", "model.hidden_size=16", "model.buckets=2048",
                    "tokenizer.vocab_size=600", "distill=logits", f"teacher.source={tiny_teacher_dir}",
                    "teacher.max_length=24", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                    "trainer.precision=32-true", f"distill.augment.seed={seed}", f"hydra.run.dir={tmp_path / run}",
                    f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        log = done.stderr + done.stdout + (tmp_path / run / "train.log").read_text()
        assert ("Using the cached teacher" in log) is (run == "cached")
        for rank in (0, 1):
            assert f"Teacher outputs (Lightning predict, rank {rank} of 2): labelled" in log, log[-3000:]
        assert json.loads((tmp_path / run / "metrics.json").read_text())["test/acc"] >= 0


def test_a_shard_folder_of_another_labelling_is_one_clear_error_and_nothing_is_written(tmp_path):
    """The shard folder says whose outputs it holds (labelling.json); another teacher's is refused, not mixed in."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from speedtrain.distill.logit_cache import cached_teacher_outputs
    from speedtrain.errors import UserError

    _teacher(tmp_path / "teacher")
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as patch:  # a labelling stopped after its first shard
        import speedtrain.distill.logit_cache as logit_cache

        patch.setattr(logit_cache, "_batch_outputs", _stop_after_first_batch(logit_cache._batch_outputs))
        patch.setattr(logit_cache, "SHARD_TEXTS", 8)
        patch.setattr(logit_cache, "teacher_outputs", _keep_one_shard(logit_cache.teacher_outputs))
        with pytest.raises(RuntimeError, match="killed"):
            cached_teacher_outputs(tmp_path / "teacher", teacher, tokenizer, TEXTS, 16, cache)
    (parts,) = (cache / "logits").glob("*.parts")
    manifest = json.loads((parts / "labelling.json").read_text())
    assert manifest["texts"] == len(TEXTS) and manifest["shard_texts"] == 8 and len(list(parts.glob("*.npz"))) == 1
    before = {p.name: p.read_bytes() for p in parts.iterdir()}
    (parts / "labelling.json").write_text(json.dumps({**manifest, "teacher": "0123abcd"}))  # another teacher's
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logit_cache, "SHARD_TEXTS", 8)
        with pytest.raises(UserError, match=r"another labelling \(teacher 0123abcd.*rm -r"):
            cached_teacher_outputs(tmp_path / "teacher", teacher, tokenizer, TEXTS, 16, cache)
    assert {p.name for p in parts.iterdir()} == set(before) and not list((cache / "logits").glob("*.npz"))
    assert (parts / "000000.npz").read_bytes() == before["000000.npz"]


def _stop_after_first_batch(batch_outputs):
    calls = []

    def outputs(*args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return batch_outputs(*args)

    return outputs


def _keep_one_shard(teacher_outputs):
    def outputs(*args, **kwargs):
        return teacher_outputs(*args, **{**kwargs, "batch_size": 8})

    return outputs


def test_a_one_process_run_labels_on_the_device_it_is_given_and_gives_the_teacher_back(tmp_path, monkeypatch):
    """``cached_teacher_outputs(device=...)`` (``trainer.labelling_device``: cuda on a GPU run) moves the teacher
    there for the labelling and back after; the outputs are those of labelling where the teacher was."""
    from speedtrain.distill import logit_cache
    from speedtrain.models.teacher import load_classifier, load_tokenizer

    _teacher(tmp_path / "teacher")
    folder = str(tmp_path / "teacher")
    teacher, tokenizer = load_classifier(folder, num_labels=3), load_tokenizer(folder)
    expected = logit_cache.teacher_outputs(teacher, tokenizer, TEXTS, 16)["logits"]
    moves, seen = [], []
    to = type(teacher).to
    monkeypatch.setattr(type(teacher), "to", lambda self, device: moves.append(str(device)) or to(self, "cpu"))

    def spy(model, tok, texts, max_length, layers):
        seen.append(model is teacher)
        return batch(model, tok, texts, max_length, layers)

    batch = logit_cache._batch_outputs
    monkeypatch.setattr(logit_cache, "_batch_outputs", spy)
    outputs, hit = logit_cache.cached_teacher_outputs(tmp_path / "teacher", teacher, tokenizer, TEXTS, 16,
                                                      tmp_path / "cache", device="cuda")
    assert moves == ["cuda", "cpu"] and seen and all(seen) and not hit  # there for the labelling, then back home
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-5)
