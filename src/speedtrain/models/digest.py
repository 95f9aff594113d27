"""What a model folder holds, as a hash: the key of every cache that depends on a teacher's weights.

    weights_digest("~/.cache/speedtrain/teachers/<key>")  # sha256 hex of the weights, config and tokenizer files

The teacher's logits (:mod:`speedtrain.distill.logit_cache`), the static student's start
(:mod:`speedtrain.distill.static_init`) and the ``static_lr`` peer's piece vectors (:mod:`speedtrain.bench.static_peer`)
are all keyed by it, so a teacher trained again never meets another's cached outputs.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

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
