"""Serving backends: the in-process engine and vLLM servers over HTTP."""
