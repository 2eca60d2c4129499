# The two commands of the quick start: `make book` and `make test`; `make course`, `make slides`
# and `make live` for teachers.
# Each creates .venv (once) with PyTorch pinned by constraints.txt, then does its job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test course slides live lab serve clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev]"
	touch $(STAMP)

book: $(STAMP)  ## build the web book, English in _build/html and Chinese in _build/html/zh (notebooks run once)
	$(BIN)/python tools/book.py build

test: $(STAMP)  ## run every test: package, notebooks (nbval), book build and browser check
	$(BIN)/python -m pytest

course: $(STAMP)  ## build the course's student and instructor editions into _build/course
	$(BIN)/python tools/course.py build

slides: $(STAMP)  ## a reveal.js deck of every chapter in _build/slides (outputs from the book build's cache)
	$(BIN)/python tools/course.py slides

live: book  ## serve the book on http://127.0.0.1:8000 with live code on a local Jupyter server
	$(BIN)/python tools/book.py live

lab: $(STAMP)  ## open the notebooks in JupyterLab
	$(BIN)/jupyter lab notebooks/

serve:  ## serve the built book on http://127.0.0.1:8000
	$(BIN)/python tools/book.py serve

clean:
	rm -rf _build _vendor
