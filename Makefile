# make book   — execute every chapter at PROFILE (paper by default) and build the HTML book
# make test   — lint, pytest on the toolkit, nbval on every notebook, and a headless-browser
#               check of the book built at the quick profile
# Both create .venv and install what they need on first use.

PYTHON  ?= python3
PROFILE ?= paper
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Chapters in the order of the table of contents (its generated scorecard page excluded).
STEMS   := $(filter-out scorecard performance,$(shell sed -n 's|^ *- file: book/chapters/||p' _toc.yml))
PROFILES := quick $(patsubst params/%/,%,$(wildcard params/*/))
EXECUTED ?= _build/executed
RESULTS  ?= _build/results
TEST_BOOK := _build/test-book

export PYTHONHASHSEED := 0

.PHONY: install book test-book notebooks test lint bench clean
.DELETE_ON_ERROR:

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	touch $@

install: $(STAMP)

# Each chapter runs unless its notebook, parameters and the toolkit are unchanged since its
# last successful run at this PROFILE (tools/bookbuild.py keys it by their hash). A failed
# chapter is reported on its page and in the scorecard, and makes `make book` exit 1.
book: $(STAMP)
	@case " $(PROFILES) " in *" $(PROFILE) "*) ;; *) echo "PROFILE must be one of: $(PROFILES); got '$(PROFILE)'" >&2; exit 2;; esac
	@$(BIN)/python -m tools.bookbuild chapter $(STEMS) --profile $(PROFILE) --executed $(EXECUTED) --results $(RESULTS)
	@$(BIN)/python -m tools.bookbuild config .book-config.yml  # at the root: its relative paths resolve from there
	@$(BIN)/python -m benchmarks.report --executed $(EXECUTED)
	@$(BIN)/python -m tools.bookbuild scorecard $(STEMS) --executed $(EXECUTED) --results $(RESULTS); status=$$?; \
	  $(BIN)/jupyter-book build . --config .book-config.yml --warningiserror --nitpick --quiet || exit 1; \
	  echo "Book: _build/html/index.html"; exit $$status

# The book at the quick profile in its own tree (_build/test-book), sharing nbval's result
# caches, so that testing never overwrites the book `make book` built.
test-book: $(STAMP)
	@rm -rf $(TEST_BOOK)/book $(TEST_BOOK)/_build
	@mkdir -p $(TEST_BOOK)/book
	@cp _toc.yml $(TEST_BOOK)/
	@$(BIN)/python -m tools.bookbuild config $(TEST_BOOK)/_config.yml
	@cp -R book/. $(TEST_BOOK)/book/
	@ln -sfn ../executed $(TEST_BOOK)/book/chapters
	@$(BIN)/python -m tools.bookbuild chapter $(STEMS) --profile quick --executed $(TEST_BOOK)/executed \
	  --results _build/test-results
	$(BIN)/python -m benchmarks.report --executed $(TEST_BOOK)/executed
	$(BIN)/python -m tools.bookbuild scorecard $(STEMS) --executed $(TEST_BOOK)/executed --results _build/test-results
	$(BIN)/jupyter-book build $(TEST_BOOK) --warningiserror --nitpick --quiet

# Re-execute the committed notebooks at their quick defaults (their stored outputs are what nbval compares).
notebooks: $(STAMP)
	@for stem in $(STEMS); do \
	  $(BIN)/jupytext --sync notebooks/$$stem.md && \
	  DPO_RESULTS_ROOT=$(CURDIR)/_build/test-results $(BIN)/papermill notebooks/$$stem.ipynb notebooks/$$stem.ipynb \
	    --cwd notebooks --log-level ERROR --no-progress-bar || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check dpo_toolkit tests benchmarks tools
	$(BIN)/ruff format --check dpo_toolkit tests benchmarks tools

test: $(STAMP) lint
	$(BIN)/pytest
	DPO_RESULTS_ROOT=$(CURDIR)/_build/test-results $(BIN)/pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks
	$(MAKE) --no-print-directory test-book
	$(BIN)/python -m tools.check_site $(TEST_BOOK) --screenshots _build/screenshots

# The benchmark suite (benchmarks/) in its own environment: TRL needs transformers 5,
# while the test environment pins the [hf] extra's version; benchmarks/constraints.txt pins its versions.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml benchmarks/constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -c benchmarks/constraints.txt -e ".[bench]"
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks

clean:
	rm -rf _build
