"""The teacher's outputs for the training texts, computed once and cached, so a training step runs only the student.

What is cached: the logits (N, C) and, for intermediate distillation between different tokenizers, the masked
mean over tokens of the hidden states of the requested teacher layers (N, L, H) — per text, so independent of
how the student tokenizes. The cache key covers the teacher folder's weights, config and tokenizer files, the
texts in order, the input length and the layers: other data or another teacher is recomputed, never reused.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def teacher_outputs(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
    batch_size: int = 128, layers: tuple[int, ...] = (),
) -> dict[str, np.ndarray]:
    """The teacher's ``logits`` (N, C) for ``texts`` in eval mode, batched (sorted by length for speed), and with
    ``layers`` the masked token mean of those ``hidden_states`` (0: embeddings) as ``hidden`` (N, len(layers), H)."""
    teacher.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = {"logits": np.zeros((len(texts), teacher.config.num_labels), dtype=np.float32)}
    if layers:
        out["hidden"] = np.zeros((len(texts), len(layers), teacher.config.hidden_size), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in track(starts, description="teacher outputs", transient=True, disable=len(starts) < 4):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt", return_token_type_ids=False)
        enc = {k: v.to(teacher.device) for k, v in enc.items()}
        result = teacher(**enc, output_hidden_states=bool(layers))
        out["logits"][idx] = result.logits.float().cpu().numpy()
        if layers:
            mask = enc["attention_mask"][..., None].float()  # (B, T, 1)
            pooled = [(result.hidden_states[layer].float() * mask).sum(1) / mask.sum(1) for layer in layers]
            out["hidden"][idx] = torch.stack(pooled, 1).cpu().numpy()
    return out


MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def weights_digest(folder: str | Path) -> str:
    """A hash of a model folder's weight files (``*.safetensors``/``*.bin``), config and tokenizer files.

    Remembered per process while the files' sizes and modification times stay the same (hashing ~90 MB of
    MiniLM takes a while and a distillation run asks several times).
    """
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") or p.name in MODEL_FILES)
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(stamp)


@functools.lru_cache(maxsize=32)
def _digest(stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        path = Path(name)
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cached_teacher_outputs(
    teacher_dir: str | Path, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
    max_length: int, cache_dir: str | Path, layers: tuple[int, ...] = (),
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`teacher_outputs`, cached under ``cache_dir/logits``.

    Returns:
        The outputs (``logits``, and ``hidden`` with ``layers``) and whether they came from the cache.
    """
    layers = tuple(int(layer) for layer in layers)
    h = hashlib.sha256(f"{weights_digest(teacher_dir)}/{max_length}/{len(texts)}/{layers}".encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    path = Path(cache_dir) / "logits" / f"{h.hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return {k: cached[k] for k in cached.files}, True
    outputs = teacher_outputs(teacher, tokenizer, texts, max_length, layers=layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **outputs)
    Path(f.name).replace(path)  # atomic: concurrent DDP ranks never read a half-written file
    return outputs, False
