"""Serving: one interface (``backend``, ``generation``, ``ticket``) and two backends, ``local/`` and ``vllm/``."""
