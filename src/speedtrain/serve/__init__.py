"""Serve a bundle: the Python ``Predictor`` and ``speedtrain serve``, a module per job.

- ``predictor``: :class:`Predictor`, a bundle's model from Python (batching, result cache).
- ``cache``: the LRU result cache of the server and the Predictor.
- ``options``: :class:`ServeOptions`, the flags of ``speedtrain serve`` and their checks.
- ``batcher``: :class:`MicroBatcher`, concurrent requests grouped into model calls.
- ``metrics``: the Prometheus metrics of a worker.
- ``openapi``: the API's OpenAPI description and /docs page.
- ``app``: :class:`ServeApp`, the ASGI app of one worker (routes, request checks).
- ``supervisor``: :func:`serve`, the sockets, uvicorn and the worker processes.
"""
