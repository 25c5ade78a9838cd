# The two set-up commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install clean bench serve

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
	rm -f demo/demo.db
	$(BIN)/shangpin predict --model demo/model --data demo/products.jsonl --out demo/enriched.jsonl --db sqlite:///demo/demo.db
	$(BIN)/shangpin view demo/enriched.jsonl --data demo/products.jsonl --limit 12
	$(BIN)/shangpin evaluate --model demo/model --data demo/gold.jsonl --report demo/model/reports/demo-gold.html
	$(BIN)/shangpin train --task categorize --data demo/zh_products.jsonl --model demo/zh-model \
		--taxonomy demo/taxonomy/shopify-zh-CN-categories.txt
	$(BIN)/shangpin predict --model demo/zh-model --data demo/zh_products.jsonl --out demo/zh-enriched.jsonl --db sqlite:///demo/demo.db
	$(BIN)/shangpin view demo/zh-enriched.jsonl --data demo/zh_products.jsonl --limit 12
	$(BIN)/shangpin simulate --catalog demo/rank_catalog.jsonl --out demo/events.jsonl \
		--requests demo/rank_requests.jsonl --set sessions=3000 --set requests=300
	$(BIN)/shangpin events ingest demo/events.jsonl --db sqlite:///demo/demo.db --salt-file demo/.salt
	$(BIN)/shangpin rank train --catalog demo/rank_catalog.jsonl --events demo/events.jsonl --model demo/model
	$(BIN)/shangpin rank importance --model demo/model --out demo/importance.json --category "Apparel & Accessories > Shoes"
	$(BIN)/shangpin rank predict --model demo/model --requests demo/rank_requests.jsonl --out demo/rankings.jsonl
	$(BIN)/shangpin rank evaluate --model demo/model --requests demo/rank_requests.jsonl --answers demo/rank_requests.answers.jsonl
	@echo "Enriched products: demo/enriched.jsonl, demo/zh-enriched.jsonl   Evaluation report: demo/model/reports/demo-gold.html"
	@echo "Rankings: demo/rankings.jsonl   Attribute importance: demo/importance.json"
	@echo "Review workbench on the demo database: run 'make serve', then open http://127.0.0.1:8000/ui"

# The service and review workbench over the demo model and database (no API keys: local demo only).
serve: $(STAMP)
	@test -f demo/demo.db || $(MAKE) demo
	@echo "Review workbench: http://127.0.0.1:8000/ui   API docs: http://127.0.0.1:8000/docs"
	SHANGPIN_AUTH=off $(BIN)/shangpin serve --model demo/model --db sqlite:///demo/demo.db --salt-file demo/.salt --port 8000

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
	rm -rf $(VENV) demo/model demo/enriched.jsonl demo/events.jsonl demo/events.weights.json demo/rank_requests.jsonl demo/rank_requests.answers.jsonl demo/importance.json demo/rankings.jsonl demo/demo.db demo/.salt demo/report.html demo/zh-model demo/zh-enriched.jsonl
