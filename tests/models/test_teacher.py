"""The teacher: the packaged MiniLM loads offline; any HF folder works; bad sources get one clear message."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from speedtrain.errors import UserError
from speedtrain.models.teacher import load_classifier, load_tokenizer, resolve_source
from speedtrain.pipeline import run


def test_minilm_loads_offline_with_a_new_head():
    model = load_classifier("minilm", num_labels=5)
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 + 384 * 5 + 5
    assert model.config.num_labels == 5 and model.config.hidden_size == 384
    assert load_tokenizer("minilm").vocab_size == 30522


def test_bad_sources(tmp_path, tiny_teacher_dir):
    with pytest.raises(UserError, match="no Hugging Face model folder there"):
        resolve_source(str(tmp_path))
    with pytest.raises(UserError, match="teacher=none"):
        load_classifier(None, num_labels=3)
    with pytest.raises(UserError, match="predicts 2 labels but the data has 3"):
        load_classifier(str(tiny_teacher_dir), num_labels=3, fine_tuned=True)


def test_teacher_experiment_fine_tunes_and_saves_a_hf_folder(make_cfg, tmp_path, tiny_teacher_dir):
    cfg = make_cfg("+experiment=teacher", f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24",
                   "data.eval_batch_size=64", tiny_student=False)
    run(cfg)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["vocab_size"] == 30522 and "test/acc" in metrics
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert teacher.config.num_labels == 96 and teacher.config.hidden_size == 32
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer("Live horses")["input_ids"] == load_tokenizer("minilm")("Live horses")["input_ids"]
    reloaded = load_classifier(str(out / "model"), num_labels=96, fine_tuned=True)  # teacher.path use later
    assert torch.equal(reloaded.classifier.weight, teacher.classifier.weight)


def test_pretrained_model_trains_in_train_mode():
    from functools import partial

    import torch

    from speedtrain.lit.classifier import ClassifierModule

    model = load_classifier("minilm", num_labels=3)
    assert not model.training  # from_pretrained hands it over in eval mode: dropout off
    module = ClassifierModule(model, 3, optimizer=partial(torch.optim.AdamW, lr=1e-4))
    assert module.model.training and all(m.training for m in module.model.modules())


def test_mean_pooling_reads_the_masked_mean_and_survives_a_save(tmp_path, tiny_teacher_dir):
    # the 1-layer BERT of the fixture: MiniLM's code path at a fraction of its load time
    model = load_classifier(str(tiny_teacher_dir), num_labels=3, pooling="mean").eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0], [101, 2023, 2003, 1037, 2742, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits  # no padding at all
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # the padding is not in the mean
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(logits, model.classifier(mean), atol=1e-5)
    cls = load_classifier(str(tiny_teacher_dir), num_labels=3).eval()
    cls.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():  # the same weights read through BERT's own pooler (the first token) differ
        assert not torch.allclose(cls(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-3)
    model.save_pretrained(tmp_path)
    reloaded = load_classifier(str(tmp_path), num_labels=3, fine_tuned=True).eval()  # the config keeps it
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-5)
    with pytest.raises(UserError, match="teacher.pooling='max'"):
        load_classifier(str(tiny_teacher_dir), num_labels=3, pooling="max")


def test_mean_pooling_keeps_each_threads_mask_apart(tiny_teacher_dir):
    """Two threads calling one mean-pooled model (the Predictor's concurrent model calls) get their own results."""
    from concurrent.futures import ThreadPoolExecutor

    model = load_classifier(str(tiny_teacher_dir), num_labels=3, pooling="mean").eval()
    torch.manual_seed(0)
    batches = []
    for length in (5, 9, 13, 17):
        ids = torch.randint(1000, 2000, (4, 20))
        mask = (torch.arange(20) < length).long().expand(4, 20).clone()
        batches.append((ids, mask))
    with torch.no_grad():
        alone = [model(input_ids=i, attention_mask=m).logits for i, m in batches]

        def call(k):
            return model(input_ids=batches[k % 4][0], attention_mask=batches[k % 4][1]).logits

        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(call, range(64)))
    assert all(torch.allclose(out, alone[k % 4], atol=1e-6) for k, out in enumerate(together))


def test_a_mean_pooled_teacher_exports_to_onnx_with_the_same_logits(tmp_path, tiny_teacher_dir):
    import numpy as np
    import onnxruntime as ort

    from speedtrain.export.onnx import export_onnx

    model = load_classifier(str(tiny_teacher_dir), num_labels=3, pooling="mean").eval()
    export_onnx(model, tmp_path / "teacher.onnx", max_length=24, fuse=False)
    ids = np.array([[101, 2023, 2003, 102, 0, 0], [101, 2023, 2003, 1037, 2742, 102]])
    mask = (ids != 0).astype(np.int64)
    onnx = ort.InferenceSession(str(tmp_path / "teacher.onnx")).run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        torch_logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert np.abs(onnx[0] - torch_logits).max() < 1e-5
