# `make run` (the whole job), `make test` (unit tests + every notebook in smoke mode), `make lab`
# (JupyterLab on notebooks/), `make test-browser` (00 in JupyterLab in a headless Chromium).
# Each sets up .venv from the project's own files on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: run test test-browser lab venv demo clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,lab]"
	touch $@

# The main job: the numbered notebooks executed headless (executed copies in build/notebooks), ending in
# submission/submission.zip and a one-screen summary. `make run PRESET=gpu` on a GPU machine.
PRESET ?= cpu
run: venv
	$(PY) -m helpers run --preset $(PRESET)

# Two workers (pytest-xdist), one torch thread each: the notebooks run in order on one of them
# (tests/conftest.py), the test files go to whichever worker is free; the notebooks come first on
# the line so that they start first. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: venv
	rm -rf runs/smoke* runs/*/smoke*
	IMSUB_PRESET=smoke OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not browser" -n $(TEST_WORKERS) \
		--nbval-lax --nbval-current-env notebooks tests

# Needs a Chromium on the PATH (Debian/Ubuntu: `sudo apt-get install chromium`); no browser is downloaded.
test-browser: venv
	$(PY) -m pip install -q -e ".[browser]"
	IMSUB_REQUIRE_BROWSER=1 $(PY) -m pytest -q -m browser tests/test_browser.py

lab: venv
	$(VENV)/bin/jupyter lab notebooks

demo: venv
	$(PY) -m helpers.demo --out data/demo

clean:
	rm -rf build cache runs
