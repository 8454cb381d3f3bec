# The README's two commands: `make demo` (the main job end to end) and `make test` (the suite).
# Both set up .venv first when it is missing or stale.
.PHONY: venv demo test lint bench

venv:
	@bash scripts/bootstrap.sh

demo: venv
	.venv/bin/avsa demo

test: venv
	.venv/bin/python -m pytest

lint: venv
	.venv/bin/ruff check .

bench: venv
	.venv/bin/python -m bench
