"""Read and run a bundle folder: what export writes, bench times and serve serves, below all three.

- ``runtime``: any variant of a bundle as ``runner(input_ids, attention_mask) -> logits``; :class:`TextEncoder`.
- ``manifest``: ``speedtrain.json``, the bundle's manifest: write it, read it, verify every file's hash.
- ``predictor``: :class:`Predictor`, a bundle's model from Python (batching, result cache).
- ``cache``: :class:`LRUCache`, the result cache of the Predictor and of the server.

This package imports nothing from ``speedtrain.export``, ``bench``, ``serve`` or training (tests/test_layers.py).
"""
