# One entry point for people and CI.  `make demo` and `make test` are the README's
# two commands; both create the virtual environment on first use.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU wheel of torch 2.13.0 is on the development machines' disk.  On a GPU
# cluster the same pin resolves to PyPI's CUDA build; pick another CUDA build with
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
CORES      ?= all
CONFIG     ?= config/config.yaml
PORT       ?= 5000
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.simobs-installed

.PHONY: install demo test test-fast ui report lint clean-results bench

# --no-compile: Python compiles what is imported, on first import, instead of pip
# compiling every installed file (1 min 17 s instead of 3 min on 2 cores).  That relies on
# Python caching what it compiled (__pycache__), which PYTHONDONTWRITEBYTECODE=1 forbids:
# some machines (the project's CI among them) set it, and then every Snakemake job
# recompiled the ~2,000 modules it imports (6.5 s of a 10.8 s ingest job, measured).  The
# recipes below run without it (snakemake's own start, pytest); the Snakefile clears it for
# the jobs of any `snakemake` run, made by make or not.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile $(TORCH_SPEC) 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -m pip install -q --no-compile -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import simobs, torch, snakemake, mlflow, galsim" 
	@touch $@

install: $(STAMP)

# On a workstation every job that asks for 2+ threads takes the whole of a 2-core machine,
# so the demo would run one job at a time (18.8 min measured on 2 cores).  The demo caps
# each job at half the cores (Snakemake's --max-threads; 1 on 2 cores) so that two jobs
# always share the machine; the rules' priorities (workflow/rules/common.smk) order them
# along the critical path.  A cluster profile is unaffected: each job has its own cores.
NPROC       := $(shell nproc 2>/dev/null || echo 2)
DEMO_THREADS ?= $(shell n=$$(( $(NPROC) / 2 )); [ $$n -ge 1 ] && echo $$n || echo 1)

demo: install
	$(BIN)/snakemake --cores $(CORES) --max-threads $(DEMO_THREADS) --configfile $(CONFIG)
	@$(BIN)/python -m simobs.cli where --configfile $(CONFIG)

report: install
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.zip

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not slurm and not browser"

ui: install
	$(BIN)/python -m simobs.cli ui --configfile $(CONFIG) --port $(PORT)

# Performance suite (issue 16): prints a table, writes benchmarks/results/bench.json; < 15 min on 2 cores.
bench: install
	PYTHONWARNINGS=ignore $(BIN)/python benchmarks/run.py

lint: install
	$(BIN)/snakemake --lint --cores 1
