"""The in-process engine: a worker thread running continuous batches of every persona's adapter."""
