# make book   — execute every chapter at PROFILE (paper by default) and build the HTML book
# make test   — lint, pytest on the toolkit, nbval on every notebook
# Both create .venv and install what they need on first use.

PYTHON  ?= python3
PROFILE ?= paper
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
STEMS   := $(basename $(notdir $(wildcard notebooks/*.md)))
EXECUTED := $(patsubst %,_build/executed/%.ipynb,$(STEMS))
PROFILES := quick $(patsubst params/%/,%,$(wildcard params/*/))

export PYTHONHASHSEED := 0

.PHONY: install book notebooks test lint clean
.DELETE_ON_ERROR:

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	touch $@

install: $(STAMP)

book: $(STAMP)
	@case " $(PROFILES) " in *" $(PROFILE) "*) ;; *) echo "PROFILE must be one of: $(PROFILES); got '$(PROFILE)'" >&2; exit 2;; esac
	@mkdir -p _build/executed
	@for stem in $(STEMS); do \
	  params=params/$(PROFILE)/$$stem.yaml; \
	  echo "== $$stem ($(PROFILE) profile)"; \
	  start=$$(date +%s); \
	  $(BIN)/papermill notebooks/$$stem.ipynb _build/executed/$$stem.ipynb --cwd notebooks \
	    --log-level ERROR --no-progress-bar $$( [ -f $$params ] && echo "-f $$params" ) || exit 1; \
	  echo "   $$stem took $$(( $$(date +%s) - start )) s"; \
	done
	$(BIN)/jupyter-book build . --warningiserror --nitpick --quiet
	@echo "Book: _build/html/index.html"

# Re-execute the committed notebooks at their quick defaults (their stored outputs are what nbval compares).
notebooks: $(STAMP)
	@for stem in $(STEMS); do \
	  $(BIN)/jupytext --sync notebooks/$$stem.md && \
	  DPO_RESULTS_ROOT=$(CURDIR)/_build/test-results $(BIN)/papermill notebooks/$$stem.ipynb notebooks/$$stem.ipynb \
	    --cwd notebooks --log-level ERROR --no-progress-bar || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check dpo_toolkit tests benchmarks
	$(BIN)/ruff format --check dpo_toolkit tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest
	DPO_RESULTS_ROOT=$(CURDIR)/_build/test-results $(BIN)/pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

clean:
	rm -rf _build
