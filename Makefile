# Two commands: `make run` (the whole job) and `make test` (unit tests + every notebook in smoke mode).
# Each sets up .venv from the project's own files on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED  := build/notebooks

.PHONY: run test venv demo clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The main job: every notebook executed headless, in order; executed copies land in build/notebooks.
run: venv
	@mkdir -p $(EXECUTED)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(PY) -m nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
	    --output-dir $(EXECUTED) $$nb || exit 1; \
	done

test: venv
	IMSUB_PRESET=smoke $(PY) -m pytest -q tests --nbval-lax --nbval-current-env notebooks

demo: venv
	$(PY) -m helpers.demo --out data/demo

clean:
	rm -rf build cache runs
