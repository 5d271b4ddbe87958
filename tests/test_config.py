import pytest

from prunevid import PruneVidConfig


def test_defaults_are_the_papers_mc_settings():
    c = PruneVidConfig()
    assert (c.tau, c.temporal_segment_ratio, c.cluster_ratio, c.selected_layer, c.alpha, c.k) == (0.8, 0.25, 0.5, 10, 0.4, 7)
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


def test_from_params_rejects_unknown_names_and_coerces_integral_floats():
    with pytest.raises(ValueError, match="unknown PruneVid parameter"):
        PruneVidConfig.from_params({"alhpa": 0.3})
    assert PruneVidConfig.from_params({"selected_layer": 3.0}).selected_layer == 3
