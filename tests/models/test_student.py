"""The student is a plain Hugging Face BERT classifier that loads without speedtrain."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from speedtrain.errors import UserError
from speedtrain.models.student import build_student, count_parameters


def test_bert_tiny_size_and_attention():
    model = build_student(vocab_size=5000, num_labels=96)
    assert model.config._attn_implementation == "sdpa"
    assert count_parameters(model) == {"params_total": 1_069_920, "params_non_embedding": 425_440}


def test_save_and_load_with_auto_class(tmp_path):
    torch.manual_seed(0)
    model = build_student(vocab_size=300, num_labels=3, hidden_size=32, intermediate_size=64,
                          id2label={0: "fruit", 1: "shoes", 2: "tools"}).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 300, (4, 10))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits  # (4, 3)
        got = loaded(input_ids=ids, attention_mask=mask).logits
    assert expected.shape == (4, 3)
    torch.testing.assert_close(got, expected)
    assert loaded.config.id2label[1] == "shoes"


def test_heads_must_divide_width():
    with pytest.raises(UserError, match="model.hidden_size=100 is not divisible by model.num_attention_heads=3"):
        build_student(vocab_size=300, num_labels=3, hidden_size=100, num_attention_heads=3)
