"""repro-env: the RePro process reward (arXiv 2512.01925) as Gymnasium environments."""

__version__ = "0.1.0"
