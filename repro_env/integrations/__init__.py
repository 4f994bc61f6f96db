"""Bridges to other trainers, each behind its own extra (``trl.py``: ``pip install repro-env[trl]``)."""
