# Every target creates .venv on first use: torch==2.13.0 first (a CPU wheel where one is
# provided), then alloy with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench browser clean-venv

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Headless Chromium for the report's browser test, installed with apt where this runs as root;
# elsewhere the test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "no chromium: the report's browser test will skip (apt-get install chromium)"

demo: $(STAMP)
	$(BIN)/alloy demo

bench: $(STAMP)
	$(BIN)/python bench/merge_bench.py

clean-venv:
	rm -rf $(VENV)
