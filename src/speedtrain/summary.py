"""The short table a run prints at its end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from speedtrain.export.parity import largest_batch


def print_summary(metrics: dict, output_dir: Path, title: str = "speedtrain run") -> None:
    """Print the headline metrics, sizes and timings of a finished run."""
    table = Table(title=title, show_header=False)
    for key in ("val/acc", "val/f1", "test/acc", "test/f1"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    if "teacher/test_acc" in metrics:
        table.add_row("teacher test/acc", f"{metrics['teacher/test_acc']:.4f} ({metrics['teacher/params']:,} params)")
        table.add_row("student / teacher", f"{metrics['distill/teacher_share']:.1%} of the accuracy, "
                      f"{metrics['distill/size_ratio']:.1f}x fewer parameters")
    table.add_row("params", f"{metrics['params']['params_total']:,} ({metrics['params']['params_non_embedding']:,} "
                  "outside embeddings)")
    data = metrics["data"]
    table.add_row("data", f"{data['train']:,} / {data['validation']:,} / {data['test']:,} texts, "
                  f"{data['num_labels']} labels, vocab {data['vocab_size']:,}")
    t = metrics["timings"]
    teacher = f", teacher {t['teacher_s']:.1f} s" if "teacher_s" in t else ""
    table.add_row("time", f"{t['total_s']:.1f} s (data {t['data_s']:.1f} s{teacher}, fit {t['fit_s']:.1f} s)")
    if "bundle" in metrics:
        b = metrics["bundle"]
        sizes = b.get("fast_texts_per_s") or {}
        speed = (f", batch-1 p50 {b['fast_p50_ms']:.3f} ms, {largest_batch(sizes):,.0f} texts/s at "
                 f"batch {max(sizes, key=int)}" if "fast_p50_ms" in b else "")
        table.add_row("bundle", f"{b['dir']} (fast: {b['fast']}, full test split acc {b['fast_accuracy']:.2f}%{speed})")
    table.add_row("outputs", str(output_dir))
    Console().print(table)
