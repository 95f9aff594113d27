"""Predict with a bundle from Python: batching, an LRU cache of results, the variant of your choice.

    from speedtrain.bundle import Predictor
    predictor = Predictor.load("outputs/<run>/bundle")          # the bundle's fast variant
    predictor.predict(["live horses for breeding"])             # [{"label": "01", "score": 0.97}]
    predictor.predict_proba(texts)                              # (N, C) numpy probabilities
    await predictor.apredict(texts)                             # the same, off the event loop
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from speedtrain.bundle.cache import LRUCache
from speedtrain.bundle.manifest import read_manifest, verify_bundle
from speedtrain.bundle.runtime import TextEncoder, load_runner
from speedtrain.errors import UserError


class Predictor:
    """A loaded variant of a bundle with its tokenizer, label names and a result cache.

    Args:
        runner: ``runner(input_ids, attention_mask) -> logits``.
        encoder: the bundle's tokenization (truncates to the training length).
        labels: label names, by class index.
        batch_size: largest batch one model call gets (inputs are split into batches of similar token counts).
        cache_size: results kept (LRU) keyed by the normalised text; 0 turns the cache off.
        workers: model calls run at once (threads; give it a runner of one intra-op thread then): the batches of
            one call are spread over them, a single batch split in parts. :meth:`load` does this for ``threads``.
    """

    def __init__(self, runner, encoder: TextEncoder, labels: list[str], batch_size: int = 256,
                 cache_size: int = 65536, variant: str = "", workers: int = 1):
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size} must be positive")
        if cache_size < 0:
            raise UserError(f"cache_size={cache_size} must be >= 0 (0 turns the cache off)")
        if workers < 1:
            raise UserError(f"workers={workers} must be >= 1")
        self.runner, self.encoder, self.labels = runner, encoder, list(labels)
        self.batch_size, self.cache_size, self.variant, self.workers = batch_size, cache_size, variant, workers
        self._cache = LRUCache(cache_size)  # normalised text -> (C,) probabilities
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="predictor") if workers > 1 else None

    @classmethod
    def load(cls, bundle: str | Path, variant: str = "fast", threads: int | None = None, verify: bool = True,
             **kwargs) -> Predictor:
        """Load ``variant`` (``fast``: the one the bundle's manifest names) of the bundle folder ``bundle``.

        Args:
            threads: the cores it uses (None: all): that many model calls at once, each on one thread. Small
                batches keep two cores busier this way than one call on two intra-op threads: 1.10-1.38x the
                texts/s end to end at batch 256 on 2 cores (``scripts/bench_predictor.py``, docs/benchmarks.md).
            verify: check every file against the manifest's hashes first (a changed or missing file is an error).
            **kwargs: ``batch_size``, ``cache_size``.
        """
        manifest = verify_bundle(bundle) if verify else read_manifest(bundle)
        name = manifest["fast"] if variant == "fast" else variant
        if name not in manifest["variants"]:
            raise UserError(f"variant {variant!r} is not in the bundle {bundle}; it has {sorted(manifest['variants'])} "
                            "(or 'fast')")
        threads = threads or os.cpu_count() or 1
        runner = load_runner(bundle, name, 1)
        return cls(runner, TextEncoder(bundle, manifest["max_length"]), manifest["labels"], variant=name,
                   workers=threads, **kwargs)

    def predict(self, texts: list[str]) -> list[dict]:
        """``[{"label": name, "score": probability}]`` for each text, in order."""
        probs = self.predict_proba(texts)
        best = probs.argmax(axis=1)
        scores = probs[np.arange(len(best)), best].tolist()  # one conversion, not a numpy scalar per text
        return [{"label": self.labels[i], "score": score} for i, score in zip(best.tolist(), scores)]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities ``(N, C)`` for the ``N`` texts."""
        texts = _check_texts(texts)
        if not self.cache_size:
            self._cache.count_misses(len(texts))
            return self.probabilities(texts)
        keys = [self.encoder.normalize(t) for t in texts]
        found = self._cache.get_many(keys)
        first: dict[str, str] = {}  # normalised text -> its first original among the misses (what the model sees)
        for key, text, probs in zip(keys, texts, found):
            if probs is None:
                first.setdefault(key, text)
        if first:
            new = dict(zip(first, self.probabilities(list(first.values()))))
            self._cache.put_many((k, p.copy()) for k, p in new.items())  # not views that keep a whole batch alive
            found = [p if p is not None else new[k] for k, p in zip(keys, found)]
        return np.stack(found)

    async def apredict(self, texts: list[str]) -> list[dict]:
        """:meth:`predict` in a worker thread, so the event loop keeps serving."""
        return await asyncio.to_thread(self.predict, texts)

    def cache_info(self) -> dict:
        """Hits, misses, current size and capacity of the result cache."""
        return self._cache.info()

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """``(N, C)`` probabilities of checked texts, no cache (the server's batches). Texts are sorted by token
        count into batches of at most ``batch_size``, each padded only to its own longest text; with ``workers``
        the batches run at once (a call of fewer batches than workers has them split)."""
        if len(texts) == 1:
            return softmax(self.runner(*self.encoder(texts)))
        groups = list(self.encoder.groups(texts, self.batch_size))
        if self._pool is not None:
            while len(groups) < self.workers:
                largest = max(range(len(groups)), key=lambda i: len(groups[i][0]))
                if len(groups[largest][0]) < 2:
                    break
                chunk, ids, mask = groups.pop(largest)
                half = len(chunk) // 2
                groups += [(chunk[:half], ids[:half], mask[:half]), (chunk[half:], ids[half:], mask[half:])]
            results = list(self._pool.map(lambda group: self.runner(group[1], group[2]), groups))
        else:
            results = [self.runner(ids, mask) for _, ids, mask in groups]
        out = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for (chunk, _, _), logits in zip(groups, results):
            out[chunk] = softmax(logits)
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits, in float32."""
    z = logits.astype(np.float32)  # a copy (ORT's output stays untouched); then in place: no temporaries
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise UserError("texts must be a list of strings, not one string; pass [text]")
    if not isinstance(texts, (list, tuple)):
        raise UserError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise UserError("texts is empty; pass at least one text")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"texts[{bad}] is {type(texts[bad]).__name__}, not a string; pass a list of strings")
    return list(texts)
