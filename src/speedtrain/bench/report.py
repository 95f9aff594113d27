"""Write a benchmark report: ``benchmark.json`` (schema :data:`SCHEMA`), ``benchmark.md`` and ``benchmark.png``.

``benchmark.json``::

    schema: 1, created: ISO time, machine: {cpu, cores, gpu, os, python, versions{...}}
    data: {split, texts, max_length}         the texts every variant was checked and timed on
    reference: "pytorch"                     the trained model every variant is compared with
    parity_budget: accuracy points           fast = fastest variant within it ...
    min_agreement: percent                   ... and agreeing with the reference on at least this share
    fast: variant name
    variants: {name: {parity: {accuracy, agreement, max_abs_logit_diff},   # accuracy/agreement in points
                      size_mb, memory_mb,                                   # file size; resident memory added
                      latency: {p50_ms, p95_ms, p99_ms, mean_ms, reps},     # batch 1, latency threads
                      throughput: {"<batch size>": texts per second}}}      # all cores, model time only
    end_to_end: {variant, latency: {...}, throughput: {...}}                # the fast variant with tokenization
    teacher: {source, accuracy, size_mb?, memory_mb, latency, throughput}   # PyTorch eager: the "before"
    export_s: {variant: seconds}
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

_LATENCY = {"type": "object", "required": ["p50_ms", "p95_ms", "p99_ms", "reps"],
            "properties": {k: {"type": "number", "minimum": 0} for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}}
_THROUGHPUT = {"type": "object", "patternProperties": {"^[0-9]+$": {"type": "number", "exclusiveMinimum": 0}},
               "additionalProperties": False}
_PARITY = {"type": "object", "required": ["accuracy", "agreement", "max_abs_logit_diff"],
           "properties": {"accuracy": {"type": "number", "minimum": 0, "maximum": 100},
                          "agreement": {"type": "number", "minimum": 0, "maximum": 100},
                          "max_abs_logit_diff": {"type": "number", "minimum": 0}}}
_SPEED = {"latency": _LATENCY, "throughput": _THROUGHPUT, "memory_mb": {"type": "number", "minimum": 0}}
SCHEMA = {
    "type": "object",
    "required": ["schema", "machine", "data", "reference", "parity_budget", "fast", "variants", "export_s"],
    "properties": {
        "schema": {"const": 1},
        "machine": {"type": "object", "required": ["cpu", "cores", "versions"]},
        "data": {"type": "object", "required": ["texts", "max_length"]},
        "parity_budget": {"type": "number", "minimum": 0},
        "fast": {"type": "string"},
        "variants": {"type": "object", "required": ["pytorch"], "additionalProperties": {
            "type": "object", "required": ["parity", "size_mb"],
            "properties": {"parity": _PARITY, "size_mb": {"type": "number", "minimum": 0}, **_SPEED}}},
        "end_to_end": {"type": "object", "required": ["variant", "latency", "throughput"], "properties": _SPEED},
        "teacher": {"type": "object", "required": ["latency", "throughput"], "properties": _SPEED},
        "export_s": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
    },
}


def validate_report(report: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow :data:`SCHEMA`."""
    jsonschema.validate(report, SCHEMA)
    if report["fast"] not in report["variants"]:
        raise jsonschema.ValidationError(f"fast variant {report['fast']!r} is not among the variants")


def write_report(folder: str | Path, report: dict) -> None:
    """``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` in ``folder``."""
    validate_report(report)
    folder = Path(folder)
    (folder / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "benchmark.md").write_text(markdown_table(report))
    if "latency" in report["variants"]["pytorch"]:
        plot(report, folder / "benchmark.png")


def _rows(report: dict) -> list[tuple[str, dict]]:
    rows = [(name, row) for name, row in report["variants"].items()]
    if "teacher" in report:
        rows.insert(0, (f"teacher ({Path(report['teacher']['source']).name}, eager)", report["teacher"]))
    return rows


def markdown_table(report: dict) -> str:
    """The report as a markdown table, with the machine and the fast variant named."""
    m = report["machine"]
    sizes = list(report["variants"]["pytorch"].get("throughput", {}))
    head = ["variant", "test acc", "agree %", "max |Δlogit|", "p50 ms", "p95 ms", "p99 ms",
            *[f"texts/s b{s}" for s in sizes], "size MB", "mem MB"]
    lines = [f"# Benchmark — {m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else ""), "",
             f"Batch-1 latency with the latency threads (1 by default); throughput with all cores, model time only. "
             f"{report['data']['texts']} test texts, max length {report['data']['max_length']}. Fast variant: "
             f"**{report['fast']}** (fastest within {report['parity_budget']} accuracy points of pytorch and "
             f"{report.get('min_agreement', 0):g}% agreement with it).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in _rows(report) + ([("end to end: fast + tokenizer", report["end_to_end"])]
                                       if "end_to_end" in report else []):
        p, lat, thr = row.get("parity", {}), row.get("latency", {}), row.get("throughput", {})
        acc = p.get("accuracy", row.get("accuracy"))
        cells = [f"**{name}**" if name == report["fast"] else name, _num(acc, 2), _num(p.get("agreement"), 2),
                 _num(p.get("max_abs_logit_diff"), 4), _num(lat.get("p50_ms"), 3), _num(lat.get("p95_ms"), 3),
                 _num(lat.get("p99_ms"), 3), *[_num(thr.get(s), 0) for s in sizes], _num(row.get("size_mb"), 2),
                 _num(row.get("memory_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return "\n".join(lines) + f"\n\n{versions}; {m['os']}, Python {m['python']}.\n"


def _num(value, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def plot(report: dict, path: Path) -> None:
    """Accuracy vs batch-1 latency (left) and throughput vs batch size (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, row) in enumerate(_rows(report)):
        color = plt.get_cmap("tab10")(i % 10)
        acc = row.get("parity", {}).get("accuracy", row.get("accuracy"))
        if acc is not None and "latency" in row:
            left.scatter(row["latency"]["p50_ms"], acc, s=40, color=color)
            left.annotate(name.split(" (")[0], (row["latency"]["p50_ms"], acc), fontsize=8,
                          xytext=(4, 4), textcoords="offset points")
        if row.get("throughput"):
            sizes = [int(s) for s in row["throughput"]]
            right.plot(sizes, list(row["throughput"].values()), marker="o", color=color, label=name.split(" (")[0])
    left.set(xscale="log", xlabel="p50 latency, batch 1 (ms, log)", ylabel="test accuracy (%)",
             title="accuracy vs latency")
    right.set(xscale="log", yscale="log", xlabel="batch size", ylabel="texts/s (model time)",
              title=f"throughput, {report['machine']['cores']} cores")
    right.legend(fontsize=8)
    fig.suptitle(report["machine"]["cpu"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_model_card(folder: str | Path, report: dict, labels: list[str]) -> None:
    """``README.md``: what the bundle is, how to use it, and its benchmark."""
    fast = report["fast"]
    row = report["variants"][fast]
    text = f"""# speedtrain bundle

A compact text classifier ({len(labels)} labels) trained and exported by speedtrain. The fast variant is
**{fast}**: test accuracy {row['parity']['accuracy']:.2f}% ({row['parity']['agreement']:.2f}% agreement with the
PyTorch model).

```python
from speedtrain.bundle import Predictor
predictor = Predictor.load("path/to/bundle")           # the fast variant; variant="onnx" etc. for another
predictor.predict(["live horses for breeding"])        # [{{"label": ..., "score": ...}}]
```

Without speedtrain: `AutoModelForSequenceClassification.from_pretrained(bundle)` and
`AutoTokenizer.from_pretrained(bundle)` load the PyTorch model; `onnxruntime.InferenceSession(bundle + "/model.onnx")`
takes `input_ids` and `attention_mask` (int64, batch x length <= {report['data']['max_length']}) and returns `logits`.
`labels.json` names the classes; `speedtrain.json` lists the files with their sha256.

{markdown_table(report).replace('# Benchmark', '## Benchmark', 1)}"""
    (Path(folder) / "README.md").write_text(text)
