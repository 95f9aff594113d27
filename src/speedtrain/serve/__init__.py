"""Serve a bundle over HTTP: ``speedtrain serve``, a module per job. The model itself is the bundle's
:class:`~speedtrain.bundle.predictor.Predictor`; the result cache is :class:`~speedtrain.bundle.cache.LRUCache`.

- ``options``: :class:`ServeOptions`, the flags of ``speedtrain serve`` and their checks.
- ``batcher``: :class:`MicroBatcher`, concurrent requests grouped into model calls.
- ``metrics``: the Prometheus metrics of a worker.
- ``openapi``: the API's OpenAPI description and /docs page.
- ``app``: :class:`ServeApp`, the ASGI app of one worker (routes, request checks).
- ``supervisor``: :func:`serve`, the sockets, uvicorn and the worker processes.
"""
