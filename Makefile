# Two commands set everything up on a fresh machine:
#   make demo   creates .venv if missing, installs the project, runs the demo
#   make test   same set-up (with the export extra: onnx, onnxruntime, spandrel), lints (ruff), runs the tests
#               on every core (pytest-xdist; each test process uses one thread)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sr-arch-installed

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,export]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sr_arch demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --dist loadgroup tests $(ARGS)

clean-venv:
	rm -rf $(VENV)
