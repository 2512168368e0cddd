# Set-up and checks. TORCH pins the CPU build this project is measured with; override it
# on a GPU box (make demo TORCH=torch).
TORCH ?= torch==2.13.0
PYTHON ?= python3
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1

.PHONY: install demo test lint

install:
	$(PYTHON) -m pip install --quiet "$(TORCH)" -e ".[dev]"

demo: install
	nmt demo --out demo-out

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check nmt_cli tests bench
	ruff format --check nmt_cli tests bench
