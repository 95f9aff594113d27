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


def _rank(rank: int, world: int, root: str) -> None:
    """One process: join the group, label through the run's cache, write what it labelled and got."""
    import speedtrain.distill.logit_cache as logit_cache
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = Path(root)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'group'}", rank=rank,
                                         world_size=world)
    labelled: list[str] = []
    batch_outputs = logit_cache._batch_outputs

    def spy(teacher, tokenizer, texts, max_length, layers):
        labelled.extend(texts)
        return batch_outputs(teacher, tokenizer, texts, max_length, layers)

    logit_cache._batch_outputs = spy
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


@pytest.mark.slow  # a 2-process DDP run of both stages on the CPU: ~1-2 min on 2 cores (run: pytest -m slow)
def test_a_ddp_distillation_run_labels_the_transfer_set_across_its_ranks(tmp_path, tiny_teacher_dir):
    """trainer=ddp over gloo, stage 1 fine-tuned in the run: both ranks label, each its share, and the run ends."""
    from tests.conftest import TINY_RUN
    from tests.test_train import _cli

    done = _cli(*TINY_RUN, "+experiment=distill", "model=static", "model.hidden_size=16", "model.buckets=2048",
                "tokenizer.vocab_size=600", "distill=logits", f"teacher.source={tiny_teacher_dir}",
                "teacher.max_length=24", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                "trainer.precision=32-true", f"hydra.run.dir={tmp_path / 'run'}",
                f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr + done.stdout + (tmp_path / "run" / "train.log").read_text()
    for rank in (0, 1):
        assert f"Teacher outputs: rank {rank} of 2 labelled" in log, log[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] >= 0
