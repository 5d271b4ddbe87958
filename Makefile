# Two commands: `make demo` (the kit's main job) and `make test`. Each sets up .venv on first use.
PY := .venv/bin/python
.PHONY: demo test setup clean
setup:
	@bash scripts/setup_venv.sh
demo: setup
	$(PY) -m prunevid demo
test: setup
	$(PY) -m pytest -q
clean:
	rm -rf .venv .pytest_cache
