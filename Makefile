# `make test`, `make demo` and `make lab` work on a fresh clone: they build .venv, install the package
# with the CPU torch pinned in constraints.txt, register the Jupyter kernel inside the venv, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The kernel every tutorial names: ipykernel's own name, so the notebooks open unchanged here and on Binder.
KERNEL := python3
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.lab-installed
LAB_PORT ?= 8888
# setuptools prints a 12-line "Editable installation" notice on every `pip install -e` (information
# only: this repository has no stray top-level folder named nfk_nb); keep installs quiet.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip

.PHONY: install test demo lab lint bench clean strip

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (ipykernel)"
	touch $(STAMP)

$(LAB_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev,lab]"
	touch $(LAB_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/nfk-nb run notebooks/01_quickstart.ipynb --out reports

# JupyterLab from the venv on the tutorials, loopback only; it prints the URL (with its token) to open.
# Kernels get CurveZMQ keys (no plain-TCP warning); no news feed is fetched (no pop-up, works offline).
lab: $(LAB_STAMP)
	@echo "Starting JupyterLab on notebooks/ (kernel: $(KERNEL) from $(VENV)); Ctrl-C twice stops it."
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--KernelManager.transport_encryption=auto --LabApp.news_url=None \
		$(if $(filter 0,$(shell id -u)),--allow-root)

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
