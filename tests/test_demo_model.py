"""The shipped demo model: it loads with from_pretrained, reproduces its recorded test accuracy through the runner
on a freshly generated test split, meets the issue's accuracy target, and every pruning method at a small budget
really changes what the model sees (a method that silently does nothing fails here)."""
import json
import os

import pytest

from prunevid import models
from prunevid.harness import runner
from prunevid import synthetic as S

pytestmark = pytest.mark.slow

if models.default_model() != "demo":
    pytest.skip("the demo model is not shipped yet (prunevid/assets/demo_model): nothing to check",
                allow_module_level=True)

EVAL = os.path.join(models.DEMO_MODEL_DIR, "eval.json")
with open(EVAL) as _f:
    _RECORD = json.load(_f)
# the world the shipped model was trained and recorded on (a record before version 2 names neither: version 1)
VERSION = _RECORD.get("version", 1)
TEST = (_RECORD.get("benchmarks") or {}).get("test", "synthetic")
N_TEST = S.default_n_per_task(VERSION)["test"]


def meets_target(acc: float, by_category: dict) -> bool:
    """The issue's target. Version 1: >= 85% overall with every task above chance, or else >= 70% with every task
    at least 15 points above chance. A model of a later world (issue 24): >= 85% overall, every task at least 15
    points above chance and moving direction >= 70%."""
    margins = [by_category[t] - 100 * S.CHANCE[t] for t in S.TASKS]
    if VERSION >= 2:
        return acc >= 85 and min(margins) >= 15 and by_category["moving_direction"] >= 70
    return (acc >= 85 and min(margins) > 0) or (acc >= 70 and min(margins) >= 15)


def _recorded_below_target() -> bool:
    rec = _RECORD["test"]
    return not meets_target(rec["accuracy"], rec["by_category"])


@pytest.fixture(scope="module")
def record():
    return _RECORD


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo-data"))
    S.ensure_split(root, "test", version=VERSION)          # regenerated from its seed, not read from anywhere
    return root


@pytest.fixture(scope="module")
def unpruned(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo-none"))
    res = runner.evaluate(benchmark=TEST, model="demo", method="none", data_root=data_root, output_dir=out,
                          progress=False)
    with open(os.path.join(out, "samples.jsonl")) as f:
        samples = {r["id"]: r for r in map(json.loads, f)}
    return res, samples


def test_demo_model_is_plain_llava_onevision_with_kit_defaults():
    from transformers import LlavaOnevisionForConditionalGeneration
    loaded = models.load("demo")
    assert type(loaded.model) is LlavaOnevisionForConditionalGeneration
    assert loaded.name == "demo"
    d = loaded.spec.defaults
    assert d["protocol"] == "official" and d["frames"] == 16
    n = loaded.model.config.text_config.num_hidden_layers
    assert 0 <= d["selected_layer"] < n - 1


def test_demo_model_reproduces_recorded_test_accuracy(unpruned, record):
    res, _ = unpruned
    assert res["n_samples"]["total"] == len(S.TASKS) * N_TEST
    assert res["n_samples"]["errors"] == 0
    rec = record["test"]
    # same code path and weights; CPU float32 kernels may flip a near-tie, so allow one item per task
    per_item = 100.0 / N_TEST
    for task in S.TASKS:
        assert abs(res["metrics"]["by_category"][task] - rec["by_category"][task]) <= per_item + 1e-6, task
    assert abs(res["metrics"]["accuracy"] - rec["accuracy"]) <= 100.0 / res["n_samples"]["total"] * 2 + 1e-6


@pytest.mark.xfail(_recorded_below_target(), strict=True,
                   reason="the shipped model is recorded below the target (eval.json; its model card says why)")
def test_demo_model_meets_accuracy_target(unpruned):
    """Checked on the fresh run, not on the record. While the recorded model is below target this is a strict
    xfail: it documents the gap, and a model that meets the target must come with its record."""
    res, _ = unpruned
    assert meets_target(res["metrics"]["accuracy"], res["metrics"]["by_category"]), res["metrics"]


def test_demo_model_is_above_chance(unpruned):
    """Whatever its target status, the shipped model must be clearly better than guessing overall."""
    res, _ = unpruned
    chance = 100 * sum(S.CHANCE.values()) / len(S.CHANCE)
    assert res["metrics"]["accuracy"] >= chance + 5, (res["metrics"]["accuracy"], chance)


SMALL_BUDGET = [("prunevid", {"retain": 0.1}), ("fastv", {"retain": 0.1}), ("visionzip", {"retain": 0.1}),
                ("vidcom2", {"retain": 0.1}), ("prumerge+", {"retain": 0.1}), ("random", {"retain": 0.1}),
                ("dycoke", {"retain": 0.25, "L": 1}), ("prumerge", {})]


@pytest.mark.parametrize("method,params", SMALL_BUDGET, ids=[m for m, _ in SMALL_BUDGET])
def test_pruning_at_small_budget_changes_predictions(method, params, unpruned, data_root, tmp_path):
    _, base = unpruned
    res = runner.evaluate(benchmark=TEST, model="demo", method=method, data_root=data_root,
                          output_dir=str(tmp_path), limit=70, params=params, progress=False)
    assert res["tokens"]["retained_ratio"] < 0.6
    with open(tmp_path / "samples.jsonl") as f:
        rows = [json.loads(line) for line in f]
    changed = sum(r["prediction"] != base[r["id"]]["prediction"] for r in rows)
    assert changed >= 1, f"{method} at {params} changed no prediction on {len(rows)} items"


def test_lookm_compresses_the_cache(data_root, tmp_path):
    """Look-M keeps every token in the prefill (the first answer token cannot change); its effect is the KV cache."""
    res = runner.evaluate(benchmark=TEST, model="demo", method="lookm", data_root=data_root,
                          output_dir=str(tmp_path), limit=14, params={"retain": 0.1}, progress=False)
    t = res["tokens"]
    assert t["kv_visual_tokens"] <= 0.15 * t["visual_tokens_in"]
