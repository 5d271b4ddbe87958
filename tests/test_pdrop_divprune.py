"""PyramidDrop (``pdrop``) and DivPrune (``divprune``): their rules on hand-made tensors (expected numbers worked by
hand from the transcription of upstream in each module's docstring), the shared multi-cut layer pruner on the tiny
model, matched budgets, and the ``bench`` / ``flops`` commands."""
import json
import math

import pytest
import torch
from torch import nn

import prunevid
from prunevid import methods
from prunevid.harness import flops
from prunevid.harness.cli import main
from prunevid.layer_pruner import CutPlan, LayerCut, Stage2Plan
from prunevid.methods import divprune, pdrop
from prunevid.methods.base import Method
from prunevid.methods.resolve import depth_rule

from conftest import FRAMES

P = 49
N_IN = FRAMES * P          # 392 visual tokens on the tiny model at 8 frames


# ----------------------------------------------------------------------------------------- PyramidDrop: the rules
class _Attn(nn.Module):
    """q_proj reads dims 0..3 of a token, k_proj dims 4..7: two heads of width 2, scaling 1."""

    def __init__(self):
        super().__init__()
        self.head_dim, self.scaling = 2, 1.0
        self.q_proj = nn.Linear(8, 4, bias=False)
        self.k_proj = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(8)[:4])
            self.k_proj.weight.copy_(torch.eye(8)[4:])


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = nn.Identity()
        self.self_attn = _Attn()


def test_pdrop_ranks_by_the_last_tokens_attention_mean_over_heads():
    """6 tokens (0 text, 1..4 visual, 5 the last instruction token). The last row's query is [1, 0] in both heads;
    key j of head h is [ln a_hj, 0], so its softmax is a_h / 16 with a_1 = [1, 2, 1, 4, 3, 5], a_2 = [1, 4, 3, 1, 1,
    6]. Mean over heads: [2, 6, 4, 5, 4, 11] / 32; visual columns [6, 4, 5, 4] / 32; the top 2 are visual 0 and 2
    (tokens 1 and 3). The other rows' queries point elsewhere and must not count."""
    a1, a2 = [1.0, 2, 1, 4, 3, 5], [1.0, 4, 3, 1, 1, 6]
    hidden = torch.zeros(1, 6, 8)
    hidden[0, :, 0:2] = torch.tensor([0.0, 5.0])                   # every row's head-1 query: [0, 5]
    hidden[0, :, 2:4] = torch.tensor([0.0, 5.0])
    hidden[0, 5, 0:4] = torch.tensor([1.0, 0.0, 1.0, 0.0])          # the last row's: [1, 0] in both heads
    hidden[0, :, 4] = torch.tensor(a1).log()
    hidden[0, :, 6] = torch.tensor(a2).log()
    hidden[0, :, 5] = hidden[0, :, 7] = 0.0
    rope = (torch.ones(1, 6, 2), torch.zeros(1, 6, 2))               # cos 1, sin 0: positions leave q, k as they are
    cut = LayerCut(layer=0, n_keep=2)
    kept = cut.choose(_Layer(), hidden, {"position_embeddings": rope}, slice(1, 5), query_start=5)
    assert (cut.at, cut.query, cut.scoring, cut.reduce) == ("input", "last", "rope_causal", "mean")
    torch.testing.assert_close(cut.scores, torch.tensor([6.0, 4, 5, 4]) / 32)
    assert kept.tolist() == [0, 2]


def test_pdrop_stage_counts_and_layer_schedule_by_hand():
    assert pdrop.stage_counts(392, 0.5, 3) == [392, 196, 98, 49]     # int(N x 0.5 / 0.25 / 0.125)
    assert pdrop.stage_counts(10, 0.3, 2) == [10, 3, 0]              # 0.3 x 10 = 2.9999.. -> 3; 0.09 x 10 -> 0
    assert pdrop.stage_counts(100.5, 0.5, 2) == [100.5, 50.25, 25.125]   # an average count stays unrounded
    assert pdrop.layer_counts(6, (2, 3, 5), [40, 20, 10, 5]) == [40, 40, 20, 10, 10, 5]
    # LLaVA-OneVision-7B, 28 layers, 32 x 196 tokens: 8 x 6272 + 8 x 3136 + 8 x 1568 + 4 x 784 = 90944 of 175616
    assert pdrop.layer_mean_ratio(28, (8, 16, 24), 0.5, 6272) == pytest.approx(29 / 56, abs=1e-15)


def test_pdrop_lambda_for_a_budget_by_hand():
    # tiny model: 4 layers cut at 1, 2, 3; 392 tokens; a 0.5 mean needs 784 of 1568 layer-tokens: lam 0.5459..
    # keeps int(213.99) = 213, int(116.8) = 116, int(63.8) = 63 and 392 + 213 + 116 + 63 = 784
    lam, mean, ok = pdrop.lambda_for_budget(4, (1, 2, 3), 392, 0.5)
    assert ok and mean == 0.5 and pdrop.stage_counts(392, lam, 3) == [392, 213, 116, 63]
    assert pdrop.layer_mean_ratio(4, (1, 2, 3), lam + 1e-6, 392) > 0.5          # the largest such lam
    # layers 0..7 of 28 run on every token: a quarter is out of reach; the smallest lam keeps one token at the end
    lam, mean, ok = pdrop.lambda_for_budget(28, (8, 16, 24), 6272, 0.25)
    assert not ok and mean > 8 / 28 and pdrop.stage_counts(6272, lam, 3)[-1] == 1
    assert pdrop.lambda_for_budget(28, (8, 16, 24), 6272, 1.0)[0] == 1.0


def test_pdrop_config_and_the_depth_rule():
    cfg = pdrop.PDropConfig()
    assert (cfg.layer_list, cfg.lam, cfg.retain) == (None, 0.5, None)
    assert pdrop.PDropConfig.layer_fields == {"layer_list": (8, 16, 24)}
    assert methods.make_config("pdrop", {"layer_list": "2, 4,6"}).layer_list == (2, 4, 6)   # the --set form
    assert methods.make_config("pdrop", {"layer_list": "[8,16,24]"}).layer_list == (8, 16, 24)
    # defaults beyond the depth are spread evenly: floor(L s / 4); as given on 28 and 32 layers
    assert depth_rule((8, 16, 24), 4) == (1, 2, 3) and depth_rule((8, 16, 24), 24) == (6, 12, 18)
    assert depth_rule((8, 16, 24), 28) == (8, 16, 24) and depth_rule(10, 4) == 2
    for n, layers in ((4, (1, 2, 3)), (24, (6, 12, 18)), (28, (8, 16, 24)), (32, (8, 16, 24))):
        assert methods.make_config("pdrop", n_layers=n).layer_list == layers
    assert methods.make_config("pdrop", {"layer_list": "2,30"}, n_layers=4).layer_list == (2, 30)   # given: kept
    for params, match in (({"lam": 0.0}, "lam"), ({"lam": 1.5}, "lam"), ({"retain": 0.0}, "retain"),
                          ({"layer_list": "8,4"}, "strictly increasing"), ({"layer_list": "0,4"}, ">= 1"),
                          ({"layer_list": "a,b"}, "layer indices"), ({"layer_list": ""}, "at least one")):
        with pytest.raises(ValueError, match=match):
            methods.make_config("pdrop", params)
    with pytest.raises(ValueError, match="strictly increasing"):    # two layers cannot hold three spread cuts
        methods.make_config("pdrop", n_layers=2)


def test_pdrop_declared_schedules():
    sched = flops.method_schedule("pdrop", 28, 6272)
    assert sched.tokens == [6272] * 8 + [3136] * 8 + [1568] * 8 + [784] * 4 and sched.kv == sched.tokens
    assert flops.method_schedule("pdrop", 4, 392).tokens == [392, 196, 98, 49]
    assert flops.method_schedule("pdrop", 4, 392, params={"lam": 1.0}).tokens == [392] * 4       # no-op
    sched = flops.method_schedule("pdrop", 4, 392, params={"retain": 0.5})
    assert sched.tokens == [392, 213, 116, 63] and sum(sched.tokens) / (4 * 392) == 0.5
    with pytest.raises(ValueError, match="beyond the language model's depth"):
        flops.method_schedule("pdrop", 4, 392, params={"layer_list": (1, 2, 4)})


# -------------------------------------------------------------------------------------------- DivPrune: the rules
def test_divprune_greedy_max_min_by_hand():
    """Four tokens at 0, 30, 90 and 180 degrees (norms 2, 3, 0.5, 1: cosine ignores them). Distances 1 - cos:
    0-30 0.134, 0-90 1, 0-180 2, 30-90 0.5, 30-180 1.866, 90-180 1. Seed: each token's nearest other token is
    0.134, 0.134, 0.5, 1 away: token 3. Then the farthest from {3}: token 0 (2 vs 1.866 and 1); from {3, 0}:
    token 2 (min(1, 1) = 1 vs min(1.866, 0.134)); token 1 last."""
    c30, s30 = math.cos(math.pi / 6), math.sin(math.pi / 6)
    tokens = torch.tensor([[2.0, 0.0], [3 * c30, 3 * s30], [0.0, 0.5], [-1.0, 0.0]])
    dist = divprune.cosine_distances(tokens)
    expected = torch.tensor([[0, 1 - c30, 1, 2], [1 - c30, 0, 0.5, 1 + c30], [1, 0.5, 0, 1], [2, 1 + c30, 1, 0]])
    torch.testing.assert_close(dist, expected, atol=1e-6, rtol=0)
    assert divprune.divprune_order(dist, 4).tolist() == [3, 0, 2, 1]
    assert divprune.divprune_keep(tokens, 2).tolist() == [0, 3]          # kept in their original order
    assert divprune.divprune_keep(tokens, 3).tolist() == [0, 2, 3]
    assert divprune.divprune_keep(tokens, 9).tolist() == [0, 1, 2, 3]


def test_divprune_never_picks_a_token_twice():
    """Three copies of one direction and one orthogonal token, k = 3. Seed: token 3 (its nearest is 1 away, the
    copies' 0). Then token 0; then every candidate is 0 away from the chosen set, and so is the chosen token 0
    itself: upstream's argmax over all tokens would take 0 again; the kit takes the first unchosen, token 1."""
    tokens = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert divprune.divprune_order(divprune.cosine_distances(tokens), 3).tolist() == [3, 0, 1]


def test_divprune_count_rounds_half_to_even():
    assert divprune.divprune_count(0.098, 392) == 38                    # 38.416
    assert divprune.divprune_count(0.098, 6272) == 615                  # 614.656
    assert divprune.divprune_count(0.25, 6) == 2 and divprune.divprune_count(0.25, 10) == 2   # 1.5 -> 2, 2.5 -> 2
    assert divprune.divprune_count(0.001, 10) == 1                      # at least one
    assert divprune.DivPruneConfig().retain == 0.098
    with pytest.raises(ValueError, match="retain"):
        divprune.DivPruneConfig(retain=0.0)
    with pytest.raises(ValueError, match="positions"):
        divprune.DivPruneConfig(positions="kept")
    assert flops.method_schedule("divprune", 28, 6272).tokens == [615] * 28


# ----------------------------------------------------------------------------------------- on the tiny model
def _run(model, inputs, method, **params):
    prunevid.apply(model, method=method, **params)
    try:
        with torch.no_grad():
            logits = model(**inputs, use_cache=True).logits
        return logits, prunevid.stats(model), prunevid.patch.info(model), prunevid.state.last_plan(model)
    finally:
        prunevid.remove(model)


def test_pdrop_cuts_where_upstream_does_and_caches_per_layer(tiny, tiny_inputs):
    """Layers 1, 2, 3 of the tiny model (8/16/24 spread over 4 layers). The first cut is checked against an
    independent computation: the unpatched model's input to layer 1, that layer's q/k with transformers' own RoPE,
    the full attention matrix, the last row, mean over heads, top 196 of the visual columns."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
    model, _ = tiny
    logits, st, info, plan = _run(model, tiny_inputs, "pdrop")
    assert st["layer_tokens"] == st["layer_kv_tokens"] == [392, 196, 98, 49]
    assert (st["visual_tokens_stage1"], st["visual_tokens_stage2"], st["kv_visual_tokens"]) == (392, 49, 49)
    rec = info["pdrop"]
    assert rec["layer_list"] == [1, 2, 3] and rec["stage_tokens"] == [392, 196, 98, 49]
    assert rec["layer_mean_ratio"] == (392 + 196 + 98 + 49) / (4 * 392) and rec["final_kv_ratio"] == 49 / 392
    assert isinstance(plan, CutPlan) and [c.layer for c in plan.cuts] == [1, 2, 3]

    ids = tiny_inputs["input_ids"][0]
    vis = (ids == model.config.video_token_id).nonzero().squeeze(1)[:-1]            # the last one is the newline
    start = int(vis[0])
    lm = model.model.language_model
    layer = lm.layers[1]
    box = []                                  # what enters decoder layer 1 (a hook of the test's own, removed)
    handle = layer.register_forward_pre_hook(
        lambda mod, args, kwargs: box.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**tiny_inputs)
    finally:
        handle.remove()
    h = box[0]
    with torch.no_grad():
        x = layer.input_layernorm(h)
        attn = layer.self_attn
        n = x.shape[1]
        q = attn.q_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(h, torch.arange(n)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        full = (q @ k.transpose(-1, -2) * attn.scaling).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1),
                                                                    float("-inf"))
        row = full.softmax(-1, dtype=torch.float32)[0, :, -1].mean(0)               # the last token's row
    first = plan.cuts[0]
    torch.testing.assert_close(first.scores, row[start:start + N_IN], rtol=1e-5, atol=1e-7)
    kept1 = first.keep[(first.keep >= start) & (first.keep < start + N_IN)] - start
    assert kept1.tolist() == row[start:start + N_IN].topk(196).indices.sort().values.tolist()
    # each later cut chooses among what the one before kept; the plan's keep is the last stage's, in input terms
    second = plan.cuts[1]
    assert second.visual_in == 196 and second.kept_visual == 98 and plan.cuts[2].kept_visual == 49
    final = plan.keep[(plan.keep >= start) & (plan.keep < start + N_IN)] - start
    assert final.numel() == 49 and set(final.tolist()) <= set(kept1.tolist())


def test_pdrop_kept_map_is_the_last_stage(tiny, tiny_inputs):
    model, _ = tiny
    prunevid.apply(model, method="pdrop")
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        km = methods.kept_map(model)
    finally:
        prunevid.remove(model)
    assert km.shape == (FRAMES, P) and int(km.sum()) == 49


def test_pdrop_decodes_the_same_under_eager_attention(tiny, tiny_eager, tiny_inputs):
    """After the prefill every layer's cache has its own length; eager attention gets a 4-D mask at every decode
    step, which the layer pruner cuts to each layer's cache: the tokens and scores match SDPA (no mask)."""
    outs = []
    for model in (tiny[0], tiny_eager[0]):
        prunevid.apply(model, method="pdrop")
        try:
            with torch.no_grad():
                outs.append(model.generate(**tiny_inputs, max_new_tokens=4, do_sample=False, output_scores=True,
                                           return_dict_in_generate=True))
            assert prunevid.stats(model)["layer_kv_tokens"] == [392, 196, 98, 49]
        finally:
            prunevid.remove(model)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].scores, outs[1].scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _Planned(Method):
    """Runs a given plan factory: the shared layer pruner driven directly."""
    name = "planned"
    config_class = methods.config_class("none")

    def __init__(self, make_plan):
        super().__init__(self.config_class())
        self.make_plan = make_plan

    @property
    def enabled(self):
        return True

    def plan(self, layout):
        return self.make_plan(layout)


def _planned(model, inputs, make_plan, generate=False):
    prunevid.apply(model, method="none")
    prunevid.state.get(model).impl = _Planned(make_plan)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
            st = prunevid.stats(model)
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True) if generate else None
        return logits, st, gen
    finally:
        prunevid.remove(model)


def test_a_one_cut_plan_equals_fastvs_stage2_plan(tiny, tiny_inputs):
    """The multi-cut plan with one "output" cut and cut caches is FastV's ``Stage2Plan`` (one engine)."""
    model, _ = tiny

    def stage2(lay):
        return Stage2Plan(seq_len=lay.seq_len, visual_start=lay.visual_start, visual_len=lay.visual_len,
                          query_start=lay.query_start, static_sizes=[], dynamic_sizes=[], window_sizes=[], alpha=1.0,
                          layer=1, scoring="rope_causal", reduce="mean", query="last", select="topk", n_keep=150)

    def cuts(lay):
        return CutPlan(seq_len=lay.seq_len, visual_start=lay.visual_start, visual_len=lay.visual_len,
                       query_start=lay.query_start, cache="cut",
                       cuts=[LayerCut(layer=1, n_keep=150, at="output", scores_in_model_dtype=False)])

    a, st_a, _ = _planned(model, tiny_inputs, stage2)
    b, st_b, _ = _planned(model, tiny_inputs, cuts)
    assert torch.equal(a, b) and st_a == st_b
    assert st_a["layer_tokens"] == [392, 392, 150, 150] and st_a["layer_kv_tokens"] == [150] * 4


@pytest.mark.parametrize("cache,kv", [("cut", [100] * 4), ("own", [392, 392, 100, 100])])
def test_mixed_cuts_and_both_cache_rules(tiny, tiny_inputs, cache, kv):
    """An "output" cut at layer 1 (200 kept) and an "input" cut at layer 2 (100 kept): layers 0 and 1 run on 392,
    2 and 3 on 100; the caches follow the rule; generate's prefill equals the forward and decoding runs."""
    model, _ = tiny

    def make(lay):
        return CutPlan(seq_len=lay.seq_len, visual_start=lay.visual_start, visual_len=lay.visual_len,
                       query_start=lay.query_start, cache=cache,
                       cuts=[LayerCut(layer=1, n_keep=200, at="output"), LayerCut(layer=2, n_keep=100)])

    logits, st, gen = _planned(model, tiny_inputs, make, generate=True)
    assert st["layer_tokens"] == [392, 392, 100, 100] and st["layer_kv_tokens"] == kv
    assert st["visual_tokens_stage2"] == st["kv_visual_tokens"] == 100
    torch.testing.assert_close(gen.scores[0], logits[:, -1], rtol=1e-4, atol=1e-4)


def test_cut_plan_rejects_bad_plans():
    with pytest.raises(ValueError, match="strictly increasing"):
        CutPlan(seq_len=10, visual_start=1, visual_len=5, query_start=6, cuts=[LayerCut(2, 3), LayerCut(2, 1)])
    with pytest.raises(ValueError, match="cache"):
        CutPlan(seq_len=10, visual_start=1, visual_len=5, query_start=6, cuts=[LayerCut(2, 3)], cache="some")
    with pytest.raises(ValueError, match="input or output"):
        LayerCut(2, 3, at="middle")


def test_pdrop_validation(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="beyond the language model's depth"):
        prunevid.apply(model, method="pdrop", layer_list=(1, 4))
    assert not prunevid.is_patched(model)


def test_divprune_on_the_tiny_model(tiny, tiny_inputs):
    model, _ = tiny
    _, st, info, _ = _run(model, tiny_inputs, "divprune")
    assert st["visual_tokens_stage1"] == st["visual_tokens_stage2"] == st["kv_visual_tokens"] == 38   # round(38.4)
    assert st["layer_tokens"] == [38] * 4 and sum(info["kept_per_frame"]) == 38
    prunevid.apply(model, method="divprune")
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        km, red = methods.kept_map(model), prunevid.state.last_reduction(model)
    finally:
        prunevid.remove(model)
    # the kept tokens are the greedy max-min subset of the video's features, in frame-major raster order
    with torch.no_grad():
        feats = model.model.get_video_features(tiny_inputs["pixel_values_videos"], return_dict=True).pooler_output[0]
    expected = divprune.divprune_keep(feats[:N_IN], 38)
    assert km.reshape(-1).nonzero().squeeze(1).tolist() == expected.tolist()
    torch.testing.assert_close(red.tokens, feats[:N_IN][expected])


# ----------------------------------------------------------------------------------------- matched budgets
def test_pdrop_budget_is_the_per_layer_mean(tiny, tiny_inputs):
    model, _ = tiny
    _, st, info, _ = _run(model, tiny_inputs, "pdrop", retain=0.5)
    mean = sum(st["layer_tokens"]) / (len(st["layer_tokens"]) * st["visual_tokens_in"])
    assert abs(mean - 0.5) <= 0.02 and info["budget"]["reachable"] and info["budget"]["expected_ratio"] == mean
    assert info["pdrop"]["final_kv_ratio"] == st["kv_visual_tokens"] / st["visual_tokens_in"] == 63 / 392
    _, st, info, _ = _run(model, tiny_inputs, "pdrop", retain=0.4)
    assert abs(sum(st["layer_tokens"]) / (4 * 392) - 0.4) <= 0.02
    _, st, info, _ = _run(model, tiny_inputs, "pdrop", retain=0.25)            # layer 0 sees all 392: >= 0.25
    assert not info["budget"]["reachable"] and "layers 0..0 run on all" in info["budget"]["note"]
    assert st["kv_visual_tokens"] == 1


@pytest.mark.parametrize("method,target", [("pdrop", 0.5), ("divprune", 0.25)])
def test_run_at_budget_reports_the_achieved_ratio(tiny, tiny_inputs, method, target):
    from prunevid.harness import budget
    model, _ = tiny
    rec = budget.run_at_budget(model, tiny_inputs, method, target)
    assert rec["reachable"] and abs(rec["achieved"] - target) <= 0.02, rec
    assert budget.budget_params(method, target) == ({"retain": target}, None)
    if method == "pdrop":                   # layer 0 of 4 runs on every token: a quarter is out of reach
        rec = budget.run_at_budget(model, tiny_inputs, "pdrop", 0.25)
        assert not rec["reachable"] and "before the first cut" in rec["note"]
    assert not prunevid.is_patched(model)


@pytest.mark.parametrize("retain", [0.098, 0.25, 0.5])
def test_divprune_budget(tiny, tiny_inputs, retain):
    model, _ = tiny
    _, st, _, _ = _run(model, tiny_inputs, "divprune", retain=retain)
    assert abs(st["retained_ratio"] - retain) <= 0.02


# ----------------------------------------------------------------------------------------- the commands
@pytest.mark.slow
@pytest.mark.parametrize("method", ["pdrop", "divprune"])
def test_bench_runs_the_method(capsys, method):
    assert main(["bench", "--preset", "tiny", "--method", method, "--frames", "4", "--repeats", "1", "--dtype",
                 "float32", "--no-memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == method and out["ideal_speedup"] > 1 and out["prefill_speedup"] > 0
    # PyramidDrop's layers keep caches of their own lengths: the measured KV bytes follow the per-layer record
    assert abs(out["kv_ratio"] - out["kv_ratio_expected"]) <= 0.01 * out["kv_ratio_expected"]


def test_flops_command_pdrop_by_hand(capsys):
    """LLaVA-OneVision-7B (d 3584, m 18944, 28 layers, 32 x 196 tokens), the papers' formula without text: layers
    0..7 at N, 8..15 at N/2, 16..23 at N/4, 24..27 at N/8."""
    def f(n):
        return 4 * n * 3584 ** 2 + 2 * n * n * 3584 + 2 * n * 3584 * 18944
    n = 6272
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "pdrop", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hand = (8 * f(n) + 8 * f(n / 2) + 8 * f(n / 4) + 4 * f(n / 8)) / (28 * f(n))
    assert out["flops_ratio"] == pytest.approx(hand, rel=1e-12) and out["flops_ratio"] == pytest.approx(0.4906, abs=1e-4)
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "pdrop", "--retained", "0.6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)            # --retained is pdrop's retain: the per-layer mean
    assert out["params"] == {"retain": 0.6}
    assert abs(sum(out["schedule_visual_plus_text"]) / (28 * n) - 0.6) < 1e-3
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "pdrop", "--set", "lam=0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedule_visual_plus_text"][::8] == [6272, 1568, 392, 98]


def test_flops_command_divprune(capsys):
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "divprune", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedule_visual_plus_text"] == [615] * 28             # round(0.098 x 6272) at every layer


@pytest.mark.parametrize("method", ["pdrop", "divprune"])
def test_flops_command_measures_the_method_on_a_video(capsys, method):
    from prunevid.video import sample_clip
    assert main(["flops", "--video", sample_clip("bikes"), "--model", "tiny", "--frames", "8", "--method", method,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["flops_ratio"] < 1
    assert abs(out["flops_ratio"] - out["flops_ratio_exact_with_text"]) < 0.05
