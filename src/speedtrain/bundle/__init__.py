"""Read and run a bundle folder: what export writes, bench times and serve serves, below all three.

    from speedtrain.bundle import Predictor
    predictor = Predictor.load("outputs/<run>/bundle")          # verified against its manifest, fast variant
    predictor.predict(["live horses for breeding"])             # [{"label": "01", "score": 0.97}]

- ``runtime``: any variant of a bundle as ``runner(input_ids, attention_mask) -> logits``; :class:`TextEncoder`.
- ``manifest``: ``speedtrain.json``, the bundle's manifest: write it, read it, verify every file's hash.
- ``predictor``: :class:`Predictor`, a bundle's model from Python (batching, result cache).
- ``cache``: :class:`LRUCache`, the result cache of the Predictor and of the server.

This package imports nothing from ``speedtrain.export``, ``bench``, ``serve`` or training (tests/test_layers.py).
"""

from speedtrain.bundle.cache import LRUCache
from speedtrain.bundle.manifest import read_manifest, verify_bundle
from speedtrain.bundle.predictor import Predictor
from speedtrain.bundle.runtime import VARIANT_FILES, TextEncoder, load_runner

__all__ = ["VARIANT_FILES", "LRUCache", "Predictor", "TextEncoder", "load_runner", "read_manifest", "verify_bundle"]
