# The two set-up commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shangpin train --task categorize --data demo/train.jsonl --model demo/model
	$(BIN)/shangpin train --task extract --data demo/train.jsonl --model demo/model --config configs/demo.toml
	$(BIN)/shangpin train --task attributes --data demo/train.jsonl --model demo/model \
		--set rules_file=demo/rules.toml --set synonyms_file=demo/synonyms.toml
	$(BIN)/shangpin train --task tags --data demo/train.jsonl --model demo/model
	$(BIN)/shangpin predict --model demo/model --data demo/products.jsonl --out demo/enriched.jsonl
	$(BIN)/shangpin view demo/enriched.jsonl --data demo/products.jsonl --limit 12
	$(BIN)/shangpin evaluate --model demo/model --data demo/gold.jsonl --report demo/report.html
	$(BIN)/shangpin train --task categorize --data demo/zh_products.jsonl --model demo/zh-model \
		--taxonomy demo/taxonomy/shopify-zh-CN-categories.txt
	$(BIN)/shangpin predict --model demo/zh-model --data demo/zh_products.jsonl --out demo/zh-enriched.jsonl
	$(BIN)/shangpin view demo/zh-enriched.jsonl --data demo/zh_products.jsonl --limit 12
	@echo "Enriched products: demo/enriched.jsonl, demo/zh-enriched.jsonl   Evaluation report: demo/report.html"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/extraction.py
	$(BIN)/python benchmarks/categorization.py
	$(BIN)/python benchmarks/attributes.py

clean:
	rm -rf $(VENV) demo/model demo/enriched.jsonl demo/report.html demo/zh-model demo/zh-enriched.jsonl
