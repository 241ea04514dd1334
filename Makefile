# `make test` and `make demo` work on a fresh clone: they build .venv, install the package with the
# CPU torch pinned in constraints.txt, register the Jupyter kernel inside the venv, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
KERNEL := nfk_nb
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean strip

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (nfk_nb)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/nfk-nb run notebooks/01_quickstart.ipynb --out reports

lint: $(STAMP)
	$(BIN)/ruff check nfk_nb tests benchmarks
	$(BIN)/nfk-nb strip --check notebooks/*.ipynb

# The peers of benchmarks/peers.py (pyproject's `bench` extra) without their torchvision requirement;
# a peer that does not install or import is reported under its table, not fatal.
BENCH_PEERS := backpack-for-pytorch opacus nngeometry traker einops opt_einsum unfoldNd

bench: $(STAMP)
	-$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt $(BENCH_PEERS)
	$(BIN)/python -m benchmarks

strip:
	$(BIN)/nfk-nb strip notebooks/*.ipynb

clean:
	rm -rf $(VENV) reports .pytest_cache
