# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2

.PHONY: demo test dryrun plan lint bench clean-demo

# The venv is rebuilt when the pins change. The stamp is written last, so an
# interrupted install is redone on the next call instead of being trusted.
$(VENV)/.installed: requirements.txt requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --configfile config.demo.yaml
	$(BIN)/snakemake --cores 1 --configfile config.demo.yaml --report results/demo/report.html
	@echo; cat results/demo/tables/classification.md
	@echo; cat results/demo/tables/quality.md
	@echo; echo "Report with every table and figure: results/demo/report.html"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests  # one worker per core; a file stays on one worker (its micro run is shared)

dryrun: $(VENV)/.installed
	$(BIN)/snakemake -n --quiet rules

# Jobs, GPU-/CPU-hours and disk per stage before the run (README "What it costs"); CONFIG=my.yaml for yours.
plan: $(VENV)/.installed
	$(BIN)/python -m histosynth.plan $(if $(CONFIG),--configfile $(CONFIG))

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

bench: $(VENV)/.installed
	$(BIN)/python bench/input_pipeline.py

clean-demo:
	rm -rf results/demo
