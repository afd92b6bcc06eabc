"""The vLLM backend: 1..N vLLM OpenAI-compatible servers with per-persona LoRA adapters."""
