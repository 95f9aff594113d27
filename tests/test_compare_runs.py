"""scripts/compare_runs.py: two runs of one config compare equal unless a metric or a model byte differs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile

import onnx
from onnx import TensorProto, helper

from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _onnx(path, trace: str, scale: float = 2.0) -> None:
    node = helper.make_node("Mul", ["x", "s"], ["y"], name="mul")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", f'File "{trace}/model.py", line 3'
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])])
    onnx.save(helper.make_model(graph), str(path))


def _run(folder, trace: str, acc: float = 0.9, scale: float = 2.0, serial: str = "a") -> None:
    bundle = folder / "bundle"
    bundle.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"val/acc": acc, "timings": {"fit_s": len(trace)},
                                                     "best_checkpoint": f"{folder}/best.ckpt"}))
    _onnx(bundle / "model.onnx", trace, scale)
    with zipfile.ZipFile(bundle / "model.pt2", "w") as archive:
        archive.writestr("model/.data/serialization_id", serial)
        archive.writestr("model/kernel.cpp", f"int f() {{ return 1; }}\n\n// g++ {trace}/kernel.cpp\n")
    (bundle / "benchmark.json").write_text(json.dumps({"variants": {"onnx": {"parity": {"accuracy": acc},
                                                                            "latency": {"p50_ms": len(trace)}}}}))
    (bundle / "speedtrain.json").write_text(json.dumps({"labels": ["a", "b"], "run_dir": str(folder)}))


def test_same_model_from_other_folders_is_the_same_and_a_changed_byte_or_metric_is_not(tmp_path):
    compare = _script().compare
    _run(tmp_path / "before", "/work/one", serial="x")
    _run(tmp_path / "after", "/elsewhere/two", serial="y")  # other paths, timings, serialization id
    assert compare(tmp_path / "before", tmp_path / "after") == []
    shutil.rmtree(tmp_path / "after")
    _run(tmp_path / "after", "/elsewhere/two", scale=3.0)  # another weight
    assert compare(tmp_path / "before", tmp_path / "after") == ["bundle/model.onnx: bytes differ"]
    shutil.rmtree(tmp_path / "after")
    _run(tmp_path / "after", "/work/one", acc=0.8)
    found = compare(tmp_path / "before", tmp_path / "after")
    assert "metrics.json: val/acc: 0.9 != 0.8" in found and any("parity.accuracy" in f for f in found), found
