"""speedtrain: train compact, fast text classifiers and ship them."""

__version__ = "0.1.0"
