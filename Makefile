# The two set-up commands of the README: `make test` and `make demo`. Each creates .venv when it is
# missing (torch and torchvision first, pinned, then the project) and is a no-op install afterwards.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install lint test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet -e ".[dev,timm,cluster]"
	$(PYTHON) -m pip check
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(PYTHON) -m pytest

demo: $(STAMP)
	$(VENV)/bin/prunexplain run --config examples/demo.toml --until study
	$(VENV)/bin/prunexplain study preregister --run runs/demo
	$(VENV)/bin/prunexplain run --config examples/demo.toml

bench: $(STAMP)
	$(PYTHON) -m benchmarks

clean:
	rm -rf $(VENV) runs
