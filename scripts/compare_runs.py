"""Two runs of the same config, compared: the same metrics and the same bundle, byte for byte where the bytes are
the model (a refactor that changes neither is behaviour-preserving).

    python scripts/compare_runs.py outputs/<before> outputs/<after>

Compared exactly: every metrics.json value except timings, folders and the benchmark's speed figures; every
bundle file except the ones that hold timings (benchmark.*, the model card) or the run's folder (speedtrain.json,
compared without its path, fast-variant and file-hash fields); each variant's parity (accuracy, agreement). Speed
figures are machine noise here: ``speedtrain bench`` and the benchmark scripts measure those. Exit 1 on any
difference.

Two kinds of bytes differ between identical models, and are compared without them: an ONNX file's node metadata
(the exporter's Python stack traces name the source checkout's folder) and a ``.pt2`` archive's random
``serialization_id`` and the comments AOTInductor writes into its generated C++ (its compile commands, present only
when it compiled afresh); the ``.pt2``'s compiled library and weights are compared byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from speedtrain.bundle.manifest import MANIFEST

# metrics.json keys that hold timings, folders or speed (they differ between two runs of one config)
METRIC_NOISE = {"timings", "resumed_from", "best_checkpoint", "teacher_cache", "teacher/dir"}
BUNDLE_NOISE_KEYS = {"dir", "fast_p50_ms", "fast_p99_ms", "fast_texts_per_s", "e2e_p50_ms", "e2e_texts_per_s",
                     "teacher_p50_ms", "e2e_batch"}
TIMED_FILES = {"benchmark.json", "benchmark.md", "benchmark.png", "README.md", MANIFEST}
MANIFEST_NOISE = {"run_dir", "fast", "files"}  # fast: the fastest variant here; files: hashes, compared as files


def comparable_metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    kept = {k: v for k, v in metrics.items() if k not in METRIC_NOISE and not k.startswith("bench/")}
    if "bundle" in kept:
        kept["bundle"] = {k: v for k, v in kept["bundle"].items() if k not in BUNDLE_NOISE_KEYS}
    return kept


def bundle_files(bundle: Path) -> dict[str, str]:
    """sha256 of every file of the bundle (relative path -> digest), over :func:`model_bytes` for model files."""
    return {str(p.relative_to(bundle)): hashlib.sha256(model_bytes(p)).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def model_bytes(path: Path) -> bytes:
    """The bytes of ``path`` that make the model: an ONNX file without node metadata and doc strings; a ``.pt2``
    archive's members without its serialization id, its C++ sources without comment and blank lines."""
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        for node in model.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        return model.SerializeToString()
    if path.suffix == ".pt2":
        import zipfile

        digest = hashlib.sha256()
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if name.endswith("serialization_id"):
                    continue
                data = archive.read(name)
                if name.endswith(".cpp"):
                    data = b"\n".join(line for line in data.splitlines()
                                       if line.strip() and not line.lstrip().startswith(b"//"))
                digest.update(name.encode() + b"\0" + data)
        return digest.digest()
    return path.read_bytes()


def parity_rows(bundle: Path) -> dict:
    report = json.loads((bundle / "benchmark.json").read_text())
    return {name: {"parity": row["parity"]} for name, row in report["variants"].items()}


def manifest(bundle: Path) -> dict:
    data = json.loads((bundle / MANIFEST).read_text())
    return {k: v for k, v in data.items() if k not in MANIFEST_NOISE}


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}{key}: only in {'after' if key not in a else 'before'}")
            else:
                out += differences(a[key], b[key], f"{where}{key}.")
        return out
    return [] if a == b else [f"{where.rstrip('.')}: {a!r} != {b!r}"]


def compare(before: Path, after: Path) -> list[str]:
    found = differences(comparable_metrics(before), comparable_metrics(after), "metrics.json: ")
    a_bundle, b_bundle = before / "bundle", after / "bundle"
    if a_bundle.is_dir() or b_bundle.is_dir():
        a_files, b_files = bundle_files(a_bundle), bundle_files(b_bundle)
        for name in sorted(set(a_files) | set(b_files)):
            if name in TIMED_FILES and name in a_files and name in b_files:
                continue
            if a_files.get(name) != b_files.get(name):
                found.append(f"bundle/{name}: " + ("bytes differ" if name in a_files and name in b_files
                                                   else f"only in {'after' if name not in a_files else 'before'}"))
        found += differences(parity_rows(a_bundle), parity_rows(b_bundle), "benchmark.json variants: ")
        found += differences(manifest(a_bundle), manifest(b_bundle), f"{MANIFEST}: ")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    found = compare(args.before, args.after)
    files = bundle_files(args.after / "bundle") if (args.after / "bundle").is_dir() else {}
    same = [n for n in files if n not in TIMED_FILES and n not in {f.split(":")[0][7:] for f in found}]
    print(f"identical bundle files ({len(same)}): {', '.join(same)}")
    for line in found:
        print("DIFFERENT", line)
    print("same metrics and bundle" if not found else f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
