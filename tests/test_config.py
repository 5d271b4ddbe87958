import pytest

from prunevid import PruneVidConfig


def test_defaults_are_the_papers_mc_settings():
    c = PruneVidConfig()
    assert (c.tau, c.temporal_segment_ratio, c.cluster_ratio, c.alpha, c.k) == (0.8, 0.25, 0.5, 0.4, 7)
    assert c.selected_layer is None and PruneVidConfig.layer_fields == {"selected_layer": 10}   # the model's; else 10
    assert c.stage1 and c.stage2 and c.min_merge_size == 14 and c.scoring == "official" and c.score_reduce == "max"
    assert c.positions == "renumber"                               # the official code re-numbers after stage 1


@pytest.mark.parametrize("field,value", [
    ("tau", 1.5), ("tau", float("nan")), ("temporal_segment_ratio", 0.0), ("cluster_ratio", 1.2),
    ("alpha", 0.0), ("alpha", "0.4"), ("selected_layer", -1), ("selected_layer", 2.5), ("k", 0),
    ("stage1", 1), ("scoring", "causal"), ("score_reduce", "sum"), ("seed", -3),
    ("positions", "kept"),
])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PruneVidConfig(**{field: value})


def test_make_config_rejects_unknown_names_and_coerces_integral_floats():
    from prunevid.methods import make_config        # the one builder (PruneVidConfig.from_params is gone)
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \[.alhpa.\]"):
        make_config("prunevid", {"alhpa": 0.3})
    assert make_config("prunevid", {"selected_layer": 3.0}).selected_layer == 3


# ------------------------------------------------------------------------------------- defaults resolved once
def test_apply_with_no_parameters_uses_the_studys_k():
    """``prunevid.apply(models.load(...).model)`` resolves the model's K as the runner does for the demo study."""
    import json
    import os
    import prunevid
    from prunevid import models
    with open(os.path.join(models.DEMO_MODEL_DIR, models.KIT_DEFAULTS_FILE)) as f:
        shipped = json.load(f)["selected_layer"]            # the layer ship_demo_model.py chose (4 for version 3)
    for name, k in (("demo", shipped), ("tiny", 2)):
        model = models.load(name).model
        prunevid.apply(model)
        assert prunevid.state.active_config(model).selected_layer == k, name
        prunevid.remove(model)


def test_resolution_order_and_the_depth_rule():
    import prunevid
    from prunevid import methods, state
    from prunevid.models.tiny import build_tiny_llava_onevision
    model, _ = build_tiny_llava_onevision()                          # 4 decoder layers, no defaults attached
    assert methods.make_config("prunevid", {}).selected_layer == 10                   # the method's own default
    assert methods.make_config("prunevid", {}, model).selected_layer == 2             # 10 beyond 4 layers: 4 // 2
    prunevid.apply(model)                                     # attaches the architecture's registry defaults (10)
    assert state.model_defaults(model)["selected_layer"] == 10 and state.active_config(model).selected_layer == 2
    state.set_model_defaults(model, {"selected_layer": 1, "benchmarks": {"vcgbench": {"selected_layer": 3}}})
    assert methods.make_config("prunevid", {}, model).selected_layer == 1                       # the checkpoint's
    assert methods.make_config("prunevid", {}, model, benchmark="vcgbench").selected_layer == 3  # the benchmark's
    assert methods.make_config("prunevid", {}, model, benchmark="mvbench").selected_layer == 1
    assert methods.make_config("prunevid", {"selected_layer": 0}, model, benchmark="vcgbench").selected_layer == 0
    cfg = PruneVidConfig(selected_layer=3, alpha=0.2)                  # a config object's values count as given
    assert methods.make_config("prunevid", {}, model, config=cfg).selected_layer == 3
    prunevid.remove(model)

    shallow, _ = build_tiny_llava_onevision(layers=2)
    assert methods.make_config("fastv", {}, shallow).K == 1                  # FastV's 2 is beyond 2 layers: 2 // 2
    assert methods.make_config("dycoke", {}, shallow).L == 1
    assert methods.make_config("fastv", {}, model).K == 2                    # within the depth: the default stays
    with pytest.raises(ValueError, match="FastV K=2 leaves no layer"):       # a given value is never changed
        prunevid.apply(shallow, method="fastv", K=2)
    assert methods.build("prunevid", PruneVidConfig()).config.selected_layer == 10   # no model: the method's default
