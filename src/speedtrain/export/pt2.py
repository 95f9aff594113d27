"""PyTorch-native ``.pt2``: ``torch.export`` then AOTInductor, the successor of TorchScript.

    export_pt2(model, "bundle/model.pt2", max_length=32)
    runner = torch._inductor.aoti_load_package("bundle/model.pt2")   # runner(input_ids, attention_mask) -> logits

AOTInductor compiles C++ kernels for the machine it runs on (CPU here; a CUDA device when the model is there):
bert_tiny on the 2-core CPU: 49 s, or 23 s with the wrapper compiled at -O0 (the kernels keep their
optimisation; batch-1 latency 0.38 vs 0.39 ms), which this module does.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from speedtrain.export.onnx import LogitsOnly, dynamic_shapes, example_inputs

log = logging.getLogger(__name__)


def export_pt2(model: torch.nn.Module, path: str | Path, max_length: int) -> None:
    """Compile ``model`` (HF classifier, eval, CPU) with AOTInductor into the package ``path``.

    The package takes ``input_ids (B, T)`` and ``attention_mask (B, T)`` (int64, any B, T <= max_length) and
    returns logits ``(B, C)``.
    """
    import os

    from speedtrain.config import default_cache_dir

    # Inductor compiles under /tmp/torchinductor_<user> unless told: keep it in speedtrain's cache folder
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "torchinductor"))
    wrapped = LogitsOnly(model).eval().cpu().float()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapped, example_inputs(max_length), dynamic_shapes=dynamic_shapes(max_length))
        options = {"aot_inductor.compile_wrapper_opt_level": "O0"} if _has_wrapper_opt_level() else {}
        with torch._inductor.config.patch(options):
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    log.info("Compiled %s with AOTInductor", path)


def _has_wrapper_opt_level() -> bool:
    try:
        torch._inductor.config.aot_inductor.compile_wrapper_opt_level  # noqa: B018 (torch >= 2.8)
    except AttributeError:
        return False
    return True
