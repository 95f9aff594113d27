"""The accuracy–speed frontier of students and peers: ``frontier.csv``, ``frontier.md`` and ``frontier.png``.

    paths = write_frontier(sweep_dir, rows, batch=256)

A row is one trained model (one seed of a student, the teacher, or a peer)::

    model        model family ("bert_tiny"), the teacher's source ("minilm") or peer name ("tfidf_lr", "static_lr")
    kind         "student" | "teacher" | "peer"
    seed         the training seed (the teacher's ``teacher.seed``; None for a peer)
    split        the ``data.split_seed`` of its train/validation/test split (optional: rows of several splits
                 average over them)
    test_acc     test accuracy, points
    texts_per_s  texts/s at the largest benchmark batch, all cores, tokenization included
    p50_ms       batch-1 latency, one thread, tokenization included
    params       learned numbers (None when unknown)
    speed        "e2e" (with tokenization) or "model" (model time only: marked † in the table)
    ...          anything else (batch, variant, job, fit_s, size_mb, teacher_dir): kept in the csv

The csv keeps one row per seed; the markdown table and the plot aggregate the seeds of a model (mean ± sample
std). A model is on the Pareto frontier when no other model is at least as accurate and at least as fast and
better in one of the two (on the means). The teacher is a model like the others: on the frontier when it is the
most accurate (the ceiling); the plot marks it ★ with its accuracy as a dotted line.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

FASTTEXT = "fasttext"
TFIDF_LR = "tfidf_lr"
COLUMNS = ["model", "kind", "seed", "test_acc", "texts_per_s", "p50_ms", "params"]
MARKERS = {"student": "o", "peer": "s", "teacher": "*"}


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One entry per (model, kind), in the order of first appearance: ``n`` rows (of ``seeds`` seeds and
    ``splits`` data splits), ``acc``/``acc_std``,
    ``texts_per_s``/``texts_per_s_std``, ``p50_ms`` (means; std 0.0 for one row), ``params`` (the first known),
    ``model_time_only`` (a row's speed is ``"model"``: measured without tokenization)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["kind"]), []).append(row)
    out = []
    for (model, kind), members in groups.items():
        entry = {"model": model, "kind": kind, "n": len(members),
                 "seeds": len({r.get("seed") for r in members}), "splits": len({r.get("split") for r in members})}
        for key, name in (("test_acc", "acc"), ("texts_per_s", "texts_per_s"), ("p50_ms", "p50_ms")):
            values = [float(r[key]) for r in members if r.get(key) is not None]
            entry[name] = statistics.fmean(values) if values else None
            entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        entry["params"] = next((r["params"] for r in members if r.get("params") is not None), None)
        entry["model_time_only"] = any(r.get("speed") == "model" for r in members)
        out.append(entry)
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(speed, accuracy)`` points no other point dominates (both higher is better)."""
    return [not any(sx >= x and sy >= y and (sx > x or sy > y) for sx, sy in points) for x, y in points]


def _with_front(entries: list[dict]) -> list[dict]:
    """``entries`` with ``front`` set (entries without a speed or accuracy are never on it)."""
    measured = [e for e in entries if e["acc"] is not None and e["texts_per_s"] is not None]
    front = pareto_front([(e["texts_per_s"], e["acc"]) for e in measured])
    for entry in entries:
        entry["front"] = False
    for entry, on in zip(measured, front):
        entry["front"] = on
    return entries


def _reference(entries: list[dict], model: str, key: str) -> float | None:
    return next((e[key] for e in entries if e["model"] == model and e["kind"] == "peer"), None)


def markdown_table(rows: Sequence[dict], batch: int | None = None) -> str:
    """The frontier as markdown: one line per model, fastest first, with the comparisons to the peers."""
    entries = sorted(_with_front(aggregate(rows)), key=lambda e: -(e["texts_per_s"] or 0.0))
    fast_ref, acc_ref = _reference(entries, FASTTEXT, "texts_per_s"), _reference(entries, TFIDF_LR, "acc")
    several = any(e["splits"] > 1 for e in entries)  # data.split_seed=1,2,3: means over the splits too
    head = ["model", "kind", "seeds"] + ["splits"] * several
    head += ["test acc %", f"texts/s{f' b{batch}' if batch else ''}", "p50 ms", "params"]
    head += ["× fastText texts/s"] * (fast_ref is not None) + ["Δ acc vs TF-IDF+LR"] * (acc_ref is not None)
    over = "the runs (seeds × splits; the teacher and peers: one per split)" if several else "seeds"
    lines = ["# Accuracy–speed frontier", "",
             f"texts/s: {'batch ' + str(batch) if batch else 'the largest benchmark batch'}, all cores; p50: batch 1, "
             "one thread; both with tokenization / featurisation. Students: the bundle's fast variant through the "
             f"Predictor; mean ± std over {over}. Teacher: its tokenizer + PyTorch eager, timed in the report's "
             "process. **Bold**: on the Pareto frontier (no other model is both at least as accurate and at least "
             "as fast).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for e in entries:
        name = f"**{e['model']}**" if e["front"] else e["model"]
        mark = " †" if e["model_time_only"] else ""
        cells = [name, e["kind"], str(e["seeds"]) if e["kind"] == "student" else "–"] + [str(e["splits"])] * several
        cells += [_mean_std(e["acc"], e["acc_std"], 2), _mean_std(e["texts_per_s"], e["texts_per_s_std"], 0) + mark,
                  _num(e["p50_ms"], 3) + mark, _params(e["params"])]
        if fast_ref is not None:
            cells.append(_ratio(e["texts_per_s"] / fast_ref) if e["texts_per_s"] and fast_ref else "–")
        if acc_ref is not None:
            cells.append(f"{e['acc'] - acc_ref:+.2f}" if e["acc"] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if several:
        lines += ["", *split_table(rows, [e["model"] for e in entries])]
    if any(e["model_time_only"] for e in entries):
        lines += ["", "† model time only, without tokenization (the job's metrics.json predates the end-to-end "
                      "numbers): not comparable with the other rows."]
    return "\n".join(lines) + "\n"


def split_table(rows: Sequence[dict], models: Sequence[str]) -> list[str]:
    """Markdown lines: test accuracy per split (rows) and model (columns, mean over seeds), and each student's
    difference from TF-IDF + LR on the same split: the paired comparison a mean over splits hides."""
    splits = sorted({r.get("split") for r in rows}, key=lambda v: (v is None, str(v) if v is None else v))
    students = [m for m in models if any(r["model"] == m and r["kind"] == "student" for r in rows)]
    paired = any(r["model"] == TFIDF_LR for r in rows)
    head = ["split", *models] + [f"{m} − TF-IDF+LR" for m in students] * paired
    lines = ["Per split (`data.split_seed`), test acc % (students: mean over seeds):", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for split in splits:
        means = {}
        for model in models:
            values = [float(r["test_acc"]) for r in rows
                      if r["model"] == model and r.get("split") == split and r.get("test_acc") is not None]
            means[model] = statistics.fmean(values) if values else None
        cells = [str(split)] + [_num(means[m], 2) for m in models]
        if paired:
            cells += [f"{means[m] - means[TFIDF_LR]:+.2f}" if None not in (means[m], means[TFIDF_LR]) else "–"
                      for m in students]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratio(value: float) -> str:
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.3f}×"


def _mean_std(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return _num(mean, digits) + (f" ± {_num(std, digits)}" if std else "")


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _params(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}K"


def plot(rows: Sequence[dict], path: str | Path, batch: int | None = None) -> None:
    """Accuracy vs texts/s (log x): students ●, peers ■, the teacher ★ (its accuracy dotted across), error bars
    over seeds, the Pareto frontier as steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in _with_front(aggregate(rows)) if e["acc"] is not None and e["texts_per_s"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, e in enumerate(entries):
        color = plt.get_cmap("tab10")(i % 10)
        ax.errorbar(e["texts_per_s"], e["acc"], xerr=e["texts_per_s_std"] or None, yerr=e["acc_std"] or None,
                    fmt=MARKERS.get(e["kind"], "s"), markersize=12 if e["kind"] == "teacher" else 7, color=color,
                    capsize=3, label=f"{e['model']} ({e['kind']})")
        if e["kind"] == "teacher":
            ax.axhline(e["acc"], color=color, linestyle=":", linewidth=1)
        ax.annotate(e["model"], (e["texts_per_s"], e["acc"]), fontsize=8, xytext=(5, 5), textcoords="offset points")
    front = sorted((e["texts_per_s"], e["acc"]) for e in entries if e["front"])
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="pre", color="grey", linestyle="--", linewidth=1, label="Pareto frontier")
    ax.set(xscale="log", xlabel=f"texts/s{f' at batch {batch}' if batch else ''}, with tokenization (log)",
           ylabel="test accuracy (%)", title="accuracy vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_frontier(folder: str | Path, rows: Sequence[dict], batch: int | None = None) -> dict[str, Path]:
    """Write ``frontier.csv`` (a row per seed), ``frontier.md`` and ``frontier.png`` (per model) into ``folder``.

    Args:
        rows: the rows described in the module docstring.
        batch: the batch size of ``texts_per_s`` (named in the table and the plot).

    Returns:
        ``{"csv": path, "md": path, "png": path}``.
    """
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows]
    table = pd.DataFrame([{k: row.get(k) for k in COLUMNS} | row for row in flat])
    for column in ("seed", "batch"):  # missing in some rows: keep 1, not 1.0
        if column in table:
            table[column] = table[column].astype("Int64")
    order = sorted(range(len(rows)), key=lambda i: -(rows[i].get("texts_per_s") or 0.0))
    paths = {"csv": folder / "frontier.csv", "md": folder / "frontier.md", "png": folder / "frontier.png"}
    table.iloc[order].to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown_table(rows, batch))
    plot(rows, paths["png"], batch)
    return paths


def log_frontier(run, rows: Sequence[dict], png: str | Path | None = None) -> None:
    """Log the frontier to a W&B run: ``frontier/runs`` (a row per seed), ``frontier/models`` (means) and
    ``frontier/plot`` (the png). Nothing happens when ``run`` is None; wandb is imported only then."""
    if run is None:
        return
    import pandas as pd
    import wandb

    flat = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    logged = {"frontier/runs": wandb.Table(dataframe=pd.DataFrame(flat)),
              "frontier/models": wandb.Table(dataframe=pd.DataFrame(_with_front(aggregate(rows))))}
    if png is not None and Path(png).is_file():
        logged["frontier/plot"] = wandb.Image(str(png))
    run.log(logged)
