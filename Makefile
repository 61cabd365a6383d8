# Every target creates .venv on first use: torch==2.13.0 first (a CPU wheel where one is
# provided), then alloy with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean-venv sandbox

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) sandbox
	$(BIN)/python -m pytest -q

# bubblewrap (bwrap) confines model-written code; as root on Debian/Ubuntu it is installed here.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && apt-get install -y -qq bubblewrap; } || \
	  { echo "alloy's sandbox needs bubblewrap: install the bubblewrap package (apt-get install -y bubblewrap)" >&2; exit 1; }

demo: $(STAMP)
	$(BIN)/alloy demo

bench: $(STAMP)
	$(BIN)/python bench/merge_bench.py

clean-venv:
	rm -rf $(VENV)
