"""Does a variant predict what the trained model predicts? Accuracy, top-1 agreement, max |logit difference|.

The bundle's "fast" variant is the fastest whose accuracy is within the budget of the PyTorch model's and whose
top-1 agreement with it reaches ``min_agreement`` — never one outside them (the PyTorch model always qualifies).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from speedtrain.bundle.runtime import Runner, TextEncoder


def predict_logits(runner: Runner, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Logits ``(N, C)`` of ``runner`` for ``texts``, in batches padded to their longest text."""
    parts = [runner(*encoder(list(texts[i:i + batch_size]))) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def parity(logits: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict:
    """Accuracy (points) on ``labels``, agreement (points) and max |logit diff| of ``logits`` against ``reference``.

    Args:
        logits, reference: ``(N, C)``; labels: ``(N,)`` true classes.
    """
    labels = np.asarray(labels)
    predicted = logits.argmax(axis=1)
    return {
        "accuracy": float((predicted == labels).mean() * 100),
        "agreement": float((predicted == reference.argmax(axis=1)).mean() * 100),
        "max_abs_logit_diff": float(np.abs(logits - reference).max()),
    }


def choose_fast(rows: dict[str, dict], reference: str, budget: float, min_agreement: float = 0.0,
                tie: float = 0.05) -> str:
    """The variant with the lowest batch-1 p50 latency among those within ``budget`` accuracy points of
    ``reference`` and agreeing with it on at least ``min_agreement`` % of the texts; latencies within ``tie`` (5%)
    of the lowest count as equal (timings on a shared machine move that much), and among them the highest
    throughput at the largest batch size wins.

    Args:
        rows: variant -> ``{"parity": {"accuracy", "agreement"}, "latency": {"p50_ms"}, "throughput":
            {"<batch size>": texts/s}}``; variants without a latency (not benchmarked) are not candidates.
    """
    floor = rows[reference]["parity"]["accuracy"] - budget
    candidates = [name for name, row in rows.items() if name == reference or (
                  row.get("latency") and row["parity"]["accuracy"] >= floor - 1e-9
                  and row["parity"].get("agreement", 100.0) >= min_agreement)]
    best = min(rows[name]["latency"]["p50_ms"] for name in candidates)
    near = [name for name in candidates if rows[name]["latency"]["p50_ms"] <= best * (1 + tie)]
    return max(near, key=lambda name: (largest_batch(rows[name].get("throughput")) or 0.0,
                                       -rows[name]["latency"]["p50_ms"]))


def largest_batch(throughput: dict | None) -> float | None:
    """Texts/s at the largest benchmarked batch size of ``{"<batch size>": texts/s}``."""
    return throughput[max(throughput, key=int)] if throughput else None
