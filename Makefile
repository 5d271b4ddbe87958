# Two commands: `make demo` (the kit's main job) and `make test`. Each sets up .venv on first use.
# `make lmms-eval` adds lmms-eval 0.7.3 to .venv (the kit's plugin models run inside it); `make test` does too, and
# makes the plugin's tests fail rather than skip where it is missing.
PY := .venv/bin/python
.PHONY: demo test setup lmms-eval clean
setup:
	@bash scripts/setup_venv.sh
demo: setup
	$(PY) -m prunevid demo
lmms-eval: setup
	@bash scripts/install_lmms_eval.sh
test: setup lmms-eval
	PRUNEVID_REQUIRE_LMMS_EVAL=1 $(PY) -m pytest -q
clean:
	rm -rf .venv .pytest_cache
