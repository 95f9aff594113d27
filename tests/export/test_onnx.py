"""ONNX fp32/int8/fp16 exports match eager PyTorch on random inputs of any batch size and length.

(.pt2 and real inputs: test_bundle.py.)
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from speedtrain.bundle.runtime import OrtRunner
from speedtrain.export.onnx import export_onnx, to_fp16
from speedtrain.export.quantize import quantize_int8

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random 2-layer BERT and its three ONNX files."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=MAX_LENGTH, num_labels=5,
                        attn_implementation="sdpa")
    model = BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # logits of a trained model's size (a few units)
    folder = tmp_path_factory.mktemp("onnx")
    info = export_onnx(model, folder / "model.onnx", MAX_LENGTH)
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
    to_fp16(folder / "model.onnx", folder / "model.fp16.onnx")
    return model, folder, info


def _inputs(batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids; row i is padded after a random length (row 0 full), as a tokenizer pads a batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, rng.integers(1, length + 1):] = 0
    return ids * mask, mask


def _eager(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def test_one_self_contained_file_with_ort_fusions(exported):
    _, folder, info = exported
    assert not list(folder.glob("*.data"))  # weights inside the .onnx
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, ops  # fused for ONNX Runtime
    assert info["fusions"].get("attention") == 2 and info["nodes"] < 80


def test_no_source_paths_in_the_exported_files(exported):
    """The exporter's stack traces (absolute paths of this checkout's source files) are not shipped: the same model
    exports to the same bytes from any folder or machine."""
    from pathlib import Path

    import speedtrain

    checkout = str(Path(speedtrain.__file__).resolve().parents[1]).encode()
    _, folder, _ = exported
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        assert checkout not in (folder / name).read_bytes(), name
        keys = {p.key for node in onnx.load(str(folder / name)).graph.node for p in node.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys and "namespace" in keys, (name, keys)


# (batch, length): batch 1, the max length, and shapes the exporter never saw
@pytest.mark.parametrize("batch,length", [(1, 5), (1, MAX_LENGTH), (7, 13), (32, MAX_LENGTH)])
def test_variants_match_eager(exported, batch, length):
    model, folder, _ = exported
    ids, mask = _inputs(batch, length, seed=batch + length)
    expected = _eager(model, ids, mask)
    fp32 = OrtRunner(folder / "model.onnx", 1)(ids, mask)
    np.testing.assert_allclose(fp32, expected, atol=1e-4)
    fp16 = OrtRunner(folder / "model.fp16.onnx", 1)(ids, mask)
    np.testing.assert_allclose(fp16, expected, atol=2e-2)
    int8 = OrtRunner(folder / "model.int8.onnx", 1)(ids, mask)
    spread = np.abs(expected).max()
    assert np.abs(int8 - expected).max() <= 0.1 * spread  # dynamic int8 moves logits by a few % of their range
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= 0.85


def test_int8_quantizes_again_without_value_info_when_the_quantizer_fails(exported, tmp_path, monkeypatch):
    """ONNX Runtime 1.30's quantizer rejects the fused graph's value_info (GPU machines' image): the retry without it
    gives the same int8 model as a quantizer that accepts it."""
    import onnxruntime.quantization as q

    model, folder, _ = exported
    real, calls = q.quantize_dynamic, []

    def picky(source, *args, **kwargs):  # fails like ORT 1.30 whenever the graph carries value_info
        calls.append(len(onnx.load(source).graph.value_info))
        if calls[-1]:
            raise onnx.shape_inference.InferenceError("Inferred shape and existing shape differ in dimension 0")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(q, "quantize_dynamic", picky)
    quantize_int8(folder / "model.onnx", tmp_path / "model.int8.onnx")
    assert calls[0] > 0 and calls[1:] == [0] and sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]
    ids, mask = _inputs(8, MAX_LENGTH, seed=3)
    retried = OrtRunner(tmp_path / "model.int8.onnx", threads=1)(ids, mask)
    direct = OrtRunner(folder / "model.int8.onnx", threads=1)(ids, mask)
    np.testing.assert_allclose(retried, direct, atol=1e-5)
