"""The teacher's logits for the training texts, computed once and cached, so a training step runs only the student.

The cache key covers the teacher folder's weights, config and tokenizer files, the texts in order and the input
length: other data or another teacher is recomputed, never silently reused.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def teacher_logits(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits (N, C) of ``teacher`` for ``texts``, in eval mode, batched (texts sorted by length for speed)."""
    teacher.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), teacher.config.num_labels), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in track(starts, description="teacher logits", transient=True, disable=len(starts) < 4):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt", return_token_type_ids=False)
        enc = {k: v.to(teacher.device) for k, v in enc.items()}
        out[idx] = teacher(**enc).logits.float().cpu().numpy()
    return out


MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def weights_digest(folder: str | Path) -> str:
    """A hash of a model folder's weight files (``*.safetensors``/``*.bin``), config and tokenizer files."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") or p.name in MODEL_FILES)
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cached_teacher_logits(
    teacher_dir: str | Path, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
    max_length: int, cache_dir: str | Path,
) -> tuple[np.ndarray, bool]:
    """:func:`teacher_logits`, cached under ``cache_dir/logits``.

    Returns:
        The logits (N, C) and whether they came from the cache.
    """
    h = hashlib.sha256(f"{weights_digest(teacher_dir)}/{max_length}/{len(texts)}".encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    path = Path(cache_dir) / "logits" / f"{h.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path), True
    logits = teacher_logits(teacher, tokenizer, texts, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:
        np.save(f, logits)
    Path(f.name).replace(path)  # atomic: concurrent DDP ranks never read a half-written file
    return logits, False
