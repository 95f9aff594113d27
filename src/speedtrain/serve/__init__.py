"""Serve a bundle: the Python ``Predictor`` and the HTTP app."""
