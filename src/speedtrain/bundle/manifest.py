"""The manifest of a bundle (the deployable fast model in one folder): ``speedtrain.json`` pins every file.

    bundle/
      config.json model.safetensors          student in Hugging Face format
      tokenizer.json tokenizer_config.json   its tokenizer
      model.onnx model.int8.onnx ...         exported variants (speedtrain.json names the "fast" one)
      labels.json speedtrain.json README.md  label names; manifest; model card
      benchmark.json benchmark.md benchmark.png benchmark_texts.txt   (the test texts it was benchmarked on)

    manifest = verify_bundle("outputs/<run>/bundle")   # every model file checked against its sha256 first
    manifest["fast"], manifest["labels"], manifest["max_length"]
    read_manifest(bundle)                              # without hashing; a UserError when it is not a bundle

``speedtrain.json`` holds the versions that wrote the bundle, the max length, the variants with their files, the
fast variant and the sha256 of every model file; :func:`verify_bundle` checks them before anything is loaded.
The benchmark files are results, not model files: ``speedtrain bench`` may rewrite them, so they are not hashed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from speedtrain.bundle.runtime import VARIANT_FILES
from speedtrain.errors import UserError

MANIFEST = "speedtrain.json"
FORMAT_VERSION = 1
UNHASHED = {MANIFEST, "benchmark.json", "benchmark.md", "benchmark.png", "README.md", "benchmark_texts.txt"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict:
    """The versions of speedtrain and the libraries that write and run a bundle (the manifest records them)."""
    import onnxruntime
    import torch
    import transformers

    import speedtrain

    return {"speedtrain": speedtrain.__version__, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


def write_manifest(bundle: str | Path, *, labels: list[str], max_length: int, variants: list[str], fast: str,
                   extra: dict | None = None) -> dict:
    """Write ``labels.json`` and ``speedtrain.json`` (hashing every model file now in ``bundle``)."""
    bundle = Path(bundle)
    (bundle / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    files = sorted(p.name for p in bundle.iterdir() if p.is_file() and p.name not in UNHASHED)
    manifest = {
        "format": FORMAT_VERSION,
        "labels": labels,
        "max_length": max_length,
        "variants": {v: VARIANT_FILES[v] for v in variants},
        "fast": fast,
        "files": {name: sha256(bundle / name) for name in files},
        "versions": library_versions(),
        **(extra or {}),
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(bundle: str | Path) -> dict:
    """The manifest of ``bundle``, or a clear error when the folder is not a bundle."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise UserError(f"{bundle} is not a speedtrain bundle ({MANIFEST} missing); pass the bundle folder a run "
                        "wrote (outputs/<run>/bundle) or make one with `speedtrain export <run_dir>`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-export the bundle") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: bundle format {manifest.get('format')!r}, this speedtrain reads {FORMAT_VERSION}; "
                        "re-export the bundle with this version")
    return manifest


def verify_bundle(bundle: str | Path) -> dict:
    """Check every file of the manifest exists with its recorded hash; return the manifest."""
    manifest = read_manifest(bundle)
    for name, digest in manifest["files"].items():
        path = Path(bundle) / name
        if not path.is_file():
            raise UserError(f"bundle {bundle} is incomplete: {name} is missing; copy the whole bundle folder or "
                            "re-export it")
        if sha256(path) != digest:
            raise UserError(f"bundle {bundle}: {name} does not match its hash in {MANIFEST} (changed or corrupted); "
                            "restore the file or re-export the bundle")
    return manifest
