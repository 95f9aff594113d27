"""Run any variant of a bundle through one interface: ``runner(input_ids, attention_mask) -> logits``.

Inputs are int64 numpy arrays ``(B, T)``; the output is a float32 numpy array ``(B, C)``. ``threads`` sets the
intra-op threads of the variant's runtime (ONNX Runtime session or torch).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speedtrain.bundle.wordpiece import WordPieceCache
from speedtrain.errors import UserError

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]

# variant name -> file in the bundle ("pytorch" is the Hugging Face folder itself)
VARIANT_FILES = {
    "pytorch": "model.safetensors",
    "onnx": "model.onnx",
    "onnx_int8": "model.int8.onnx",
    "onnx_fp16": "model.fp16.onnx",
    "pt2": "model.pt2",
    "pruned_onnx": "model.pruned.onnx",  # export.prune: FFN-pruned and recovered student, fp32 ...
    "pruned_onnx_int8": "model.pruned.int8.onnx",  # ... and int8
}


def load_runner(bundle: str | Path, variant: str, threads: int | None = None) -> Runner:
    """The variant ``variant`` of the bundle (or HF model folder) ``bundle`` as a runner.

    Args:
        bundle: a bundle folder (or, for ``pytorch``, any folder ``save_pretrained`` wrote).
        variant: one of :data:`VARIANT_FILES`.
        threads: intra-op threads; ``None``: all cores.
    """
    if variant not in VARIANT_FILES:
        raise UserError(f"unknown variant {variant!r}; pick one of {sorted(VARIANT_FILES)} (or 'fast')")
    path = Path(bundle) / VARIANT_FILES[variant]
    if not path.is_file():
        raise UserError(f"variant {variant!r} is not in {bundle} ({path.name} missing); "
                        f"export it (export.variants) or pick another")
    threads = threads or os.cpu_count() or 1
    if variant == "pytorch":
        return TorchRunner(load_pretrained(bundle), threads)
    if variant == "pt2":
        import torch

        return TorchRunner(torch._inductor.aoti_load_package(str(path)), threads)
    return OrtRunner(path, threads)


def load_pretrained(folder: str | Path):
    """The Hugging Face classifier in ``folder`` (safetensors only, no remote code), eval mode, CPU."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    import speedtrain.models  # noqa: F401  (registers the static family with the Auto classes)

    hf_logging.disable_progress_bar()  # "Loading weights" bars for a 4 MB file, once per variant
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), use_safetensors=True, trust_remote_code=False)
    if getattr(model.config, "speedtrain_pooling", "cls") == "mean":  # a teacher fine-tuned with teacher.pooling=mean
        from speedtrain.models.teacher import use_mean_pooling

        use_mean_pooling(model)
    return model.eval()


class TorchRunner:
    """A torch module (HF model or AOTInductor package) behind the numpy runner interface."""

    def __init__(self, model: Callable, threads: int):
        self.model, self.threads = model, threads

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch  # here, not at the top: ONNX variants (the server's workers) never load torch

        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        if torch.get_num_threads() != self.threads:  # torch's thread count is global: set it per call
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            if isinstance(self.model, torch.nn.Module):
                out = self.model(input_ids=ids, attention_mask=mask).logits
            else:  # an AOTInductor package: positional inputs, returns the logits
                out = self.model(ids, mask)
        return out.float().numpy()


class OrtRunner:
    """An ONNX Runtime CPU session (all graph optimisations, ``threads`` intra-op threads)."""

    def __init__(self, path: str | Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if threads > 1:  # idle pool threads sleep instead of spinning: they starve the tokenizer's threads otherwise
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class TextEncoder:
    """Texts -> ``(input_ids, attention_mask)`` int64 arrays, truncated and padded exactly as in training.

    Uses the folder's ``tokenizer.json`` through ``tokenizers`` directly (2x less overhead than calling the
    ``transformers`` tokenizer for one text: 0.06 vs 0.11 ms here); same ids, tested. Padding (right, with
    ``[PAD]``) is done here, so :meth:`groups` can pad texts of similar length together.
    """

    def __init__(self, folder: str | Path, max_length: int):
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{folder} has no tokenizer.json; save the tokenizer there with save_pretrained")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id
        self.max_length = max_length
        normalizer = self.tokenizer.normalizer
        self._normalize = normalizer.normalize_str if normalizer is not None else (lambda text: text)
        # tokenizers >= 0.21: the same ids without computing character offsets (1.3x the texts/s here)
        self._encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        self._plain = _without_bert_normalizer(self.tokenizer)
        self._words = WordPieceCache.for_tokenizer(self.tokenizer)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (truncated, not padded).

        With a BERT-style WordPiece tokenizer, printable ASCII texts are split into words and each word's pieces
        looked up in a cache (:class:`~speedtrain.bundle.wordpiece.WordPieceCache`): 2-5x the texts/s of the
        tokenizer on 2 cores (``scripts/bench_tokenize.py``); the other texts go through the tokenizer. Without it,
        a batch of printable ASCII texts skips the BERT normalizer, whose work on such text is at most lowercasing
        (``str.lower`` does it here): 1.5x. Same ids either way (tested).
        """
        if self._words is not None:
            words = self._words
            rows = [words.encode(t) if words.accepts(t) else None for t in texts]
            rest = [i for i, row in enumerate(rows) if row is None]
            if rest:
                for i, e in zip(rest, self._encode_batch([texts[i] for i in rest])):
                    rows[i] = e.ids
            return rows
        if self._plain is not None and all(t.isascii() and t.isprintable() for t in texts):
            plain, lowercase = self._plain
            encode = getattr(plain, "encode_batch_fast", plain.encode_batch)
            return [e.ids for e in encode([t.lower() for t in texts] if lowercase else texts)]
        return [e.ids for e in self._encode_batch(texts)]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.encode(texts))

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token id lists -> ``(ids, mask)`` padded to the longest (vectorised: no per-row Python copy)."""
        if len(rows) == 1:  # one text (the latency path): nothing to pad, 10 us less than the general case here
            ids = np.array(rows, dtype=np.int64)
            return ids, np.ones_like(ids)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        mask = (np.arange(lengths.max()) < lengths[:, None]).astype(np.int64)  # (B, T)
        ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
        ids[mask.astype(bool)] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                                             count=int(lengths.sum()))
        return ids, mask

    def groups(self, texts: list[str], batch_size: int, waste: float = 0.15, min_group: int = 4):
        """Yield ``(indices, ids, mask)``: the texts sorted by token count into batches of at most ``batch_size``,
        each padded to its own longest, a new batch starting when padding would exceed ``waste`` of its tokens
        (and it has ``min_group`` texts: a model call has a fixed cost too).

        A batch of 64 test texts padded to the longest costs ~1.3x the tokens it holds; grouped, ~1.05x:
        0.53 instead of 0.70 ms per text on one thread here (docs/benchmarks.md, "speedtrain serve").
        """
        rows = self.encode(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        start = 0
        while start < len(order):
            end, tokens = start + 1, len(rows[order[start]])
            while end < len(order) and end - start < batch_size:
                longest = len(rows[order[end]])
                if end - start >= min_group and longest * (end - start + 1) > (1 + waste) * (tokens + longest):
                    break
                tokens += longest
                end += 1
            chunk = order[start:end]
            yield (chunk, *self.pad([rows[i] for i in chunk]))
            start = end

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (its normalizer, runs of whitespace as one space): a cache key."""
        return " ".join(self._normalize(text).split())


def _without_bert_normalizer(tokenizer) -> tuple | None:
    """``(copy of tokenizer without its normalizer, lowercase)`` when the normalizer is a ``BertNormalizer``: on
    printable ASCII its control-character cleanup, CJK spacing and accent stripping change nothing, so the copy on
    (lowercased) text gives the same ids. None for any other normalizer."""
    from tokenizers import Tokenizer, normalizers

    normalizer = tokenizer.normalizer
    if not isinstance(normalizer, normalizers.BertNormalizer):
        return None
    plain = Tokenizer.from_str(tokenizer.to_str())  # truncation and padding settings included
    plain.normalizer = None
    return plain, bool(normalizer.lowercase)
