# The two commands a newcomer needs: `make demo` and `make test`. Both set up the
# virtual environment first (python3 -m venv + pip install -e '.[test]').
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: setup apt-lists demo test lint format rulegraph bench bench-serving gpu-check clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo's Fashion-MNIST comes from Debian's package (`apt-get download`, no root needed),
# which needs apt's package lists; a fresh Debian machine has none, and only root can
# fetch them. Without root the download stage says what to run.
apt-lists:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    ! apt-cache policy dataset-fashion-mnist 2>/dev/null | grep -q 'Candidate: [0-9]'; then \
	    echo "Fetching apt's package lists (apt-get update) for Fashion-MNIST's package..."; \
	    apt-get update -qq; \
	fi

demo: $(STAMP) apt-lists
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=1 --configfile config/demo.yaml
	$(VENV)/bin/snakemake --report results/demo/report.html --configfile config/demo.yaml
	@cat results/demo/table.md
	@echo "The report: $(CURDIR)/results/demo/report.html (open it in a browser)"

# Two pytest workers (pytest-xdist): the suite's end-to-end runs spend much of their time
# starting processes and waiting on SLURM's polling, so two overlap on two cores. Each
# test module stays on one worker, the digits run's readers share one, and the longest
# units start first (tests/conftest.py; xdist's own reordering would undo that).
TEST_WORKERS ?= 2

test: $(STAMP) apt-lists lint
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/ruff format --check src tests tools
	$(VENV)/bin/snakefmt --check Snakefile workflow
	$(PYTHON) tools/lint_workflow.py --configfile config/demo.yaml

# The README's rule graph, from the paper's config; tests/test_workflow_usage.py fails
# while it is out of date. Snakemake orders the graph by string hashes: a fixed
# PYTHONHASHSEED keeps the order, and so the diff, stable.
rulegraph: $(STAMP)
	PYTHONHASHSEED=0 $(VENV)/bin/snakemake --rulegraph mermaid-js --forceall --workflow-profile none > results/rulegraph.mmd
	awk 'FNR == NR { graph = graph $$0 "\n"; next } \
	    /^```mermaid$$/ { printf "%s\n%s", $$0, graph; inside = 1; next } \
	    inside && /^```$$/ { inside = 0 } !inside' results/rulegraph.mmd README.md > README.md.tmp
	mv README.md.tmp README.md

bench: $(STAMP)
	PYTHONPATH=tools $(PYTHON) -m bench

# Many tasks over one backbone at 224 px: switch time against a plain copy, forward
# passes, memory for 1, 5 and 20 tasks (docs/performance.md, "Serving tasks").
SERVING_ARCHS ?= squeezenet1_1 resnet50 densenet121
bench-serving: $(STAMP)
	PYTHONPATH=tools $(PYTHON) -m bench.serving --archs $(SERVING_ARCHS) --threads $(CORES)

# Every GPU figure in under 8 minutes (docs/performance.md, "How to measure on a GPU").
gpu-check: $(STAMP)
	PYTHONPATH=tools $(PYTHON) -m gpu_check --out results/gpu-check

format: $(STAMP)
	$(VENV)/bin/ruff format src tests tools
	$(VENV)/bin/snakefmt Snakefile workflow

clean-demo:
	rm -rf results/demo
