"""PruneVid on a tiny random LLaVA-OneVision: identity, pruning mechanics, cache, decoding, errors."""
import pytest
import torch

import prunevid
from prunevid.layer_pruner import LayerPruner
from prunevid.prune import kept_count, select_tokens

from conftest import make_inputs

K = 1  # selected_layer scaled to the 4-layer tiny LLM


def _cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


@pytest.fixture
def model_tok(tiny):
    model, tok = tiny
    yield model, tok
    prunevid.remove(model)


def test_stages_off_is_bit_identical_and_remove_restores(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok)
    cls = type(model.model)
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        for kwargs in ({"stage1": False, "stage2": False, "selected_layer": K}, {"method": "none"}):
            prunevid.apply(model, **kwargs)
            assert torch.equal(model(**inputs).logits, ref)
            assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref_gen)
            assert prunevid.stats(model)["visual_tokens_in"] == 8 * 49
        prunevid.remove(model)
        assert type(model.model) is cls and not prunevid.is_patched(model)
        assert torch.equal(model(**inputs).logits, ref)
        prunevid.apply(model, selected_layer=K)             # a pruning patch, then removed, leaves no trace
        model(**inputs)
        prunevid.remove(model)
        assert torch.equal(model(**inputs).logits, ref)
        assert all(not layer._forward_pre_hooks and not layer._forward_hooks
                   for layer in model.model.language_model.layers)


def test_apply_is_idempotent(model_tok):
    model, tok = model_tok
    prunevid.apply(model, selected_layer=K)
    prunevid.apply(model, selected_layer=K, alpha=0.3)
    assert type(model.model).__mro__[1].__name__ == "LlavaOnevisionModel"     # not wrapped twice
    assert all(len(layer._forward_pre_hooks) == 1 for layer in model.model.language_model.layers)
    assert prunevid.state.active_config(model).alpha == 0.3


def test_defaults_prune_generate_and_cache_holds_text_plus_kept(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=8)
    prunevid.apply(model, selected_layer=K)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    s = prunevid.stats(model)
    n_in = 8 * 49
    assert s["visual_tokens_in"] == n_in
    assert sum(s["segments"]) == 8 and len(s["static_tokens"]) == len(s["segments"])
    assert s["visual_tokens_stage1"] == sum(s["static_tokens"]) + sum(s["dynamic_tokens"]) < n_in
    assert s["visual_tokens_stage2"] == kept_count(s["static_tokens"], s["dynamic_tokens"], s["segments"], 0.4)
    assert s["text_tokens"] == inputs["input_ids"].shape[1] - n_in        # the newline counts as text
    assert s["retained_ratio"] == pytest.approx(s["visual_tokens_stage2"] / n_in)
    lengths = [layer.keys.shape[-2] for layer in _cache(out).layers]
    assert lengths == [s["text_tokens"] + s["visual_tokens_stage2"]] * 4
    assert s["kv_visual_tokens"] == s["visual_tokens_stage2"]
    gen = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 5


def _reference_pruned_logits(model, embeds, positions, vis_start, n_vis, query_start, sizes, alpha, layer_k):
    """Layer-by-layer forward without hooks: full attention matrix at layer K (pre-RoPE, unmasked),
    per-group top-k, then later layers on the kept rows with their original positions."""
    lm = model.model.language_model
    h = embeds
    cos, sin = lm.rotary_emb(h, positions)
    keep = None
    for i, layer in enumerate(lm.layers):
        if i == layer_k:
            attn = layer.self_attn
            x = layer.input_layernorm(h)[0]
            q = attn.q_proj(x).view(x.shape[0], -1, attn.head_dim).transpose(0, 1)
            k = attn.k_proj(x).view(x.shape[0], -1, attn.head_dim).transpose(0, 1)
            k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
            a = torch.softmax(q.float() @ k.float().transpose(1, 2) * attn.scaling, dim=-1)     # (H, N, N)
            score = a[:, query_start:, vis_start:vis_start + n_vis].amax(0).amax(0)
            kept = select_tokens(score, *sizes, alpha)
            n = h.shape[1]
            keep = torch.cat([torch.arange(vis_start), vis_start + kept, torch.arange(vis_start + n_vis, n)])
        h = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
        if i == layer_k:
            h, cos, sin, positions = h[:, keep], cos[:, keep], sin[:, keep], positions[:, keep]
    return model.lm_head(lm.norm(h)), keep


def test_stage2_matches_a_layer_by_layer_reference(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=8, seed=3)
    prunevid.apply(model, selected_layer=K)
    captured = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: captured.update(embeds=kw["inputs_embeds"], pos=kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
            s = prunevid.stats(model)
            plan = prunevid.state.last_plan(model)
            sizes = (s["static_tokens"], s["dynamic_tokens"], s["segments"])
            ref, keep = _reference_pruned_logits(model, captured["embeds"], captured["pos"], plan.visual_start,
                                                 plan.visual_len, plan.query_start, sizes, 0.4, K)
    finally:
        handle.remove()
    assert torch.equal(plan.keep, keep)
    assert torch.allclose(logits, ref, atol=1e-5)
    # positions after stage 1 are 0..N1-1 over the merged sequence
    assert captured["pos"].tolist() == [list(range(captured["embeds"].shape[1]))]


def test_decode_loop_with_explicit_positions_matches_generate(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=8, seed=5)
    prunevid.apply(model, selected_layer=K)
    steps = 6
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        n_full = inputs["input_ids"].shape[1]
        positions_seen = []
        handle = model.model.language_model.register_forward_pre_hook(
            lambda m, a, kw: positions_seen.append(kw["position_ids"].clone()), with_kwargs=True)
        try:
            out = model(**inputs, use_cache=True)
            cache, mask = _cache(out), inputs["attention_mask"]
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens, logits = [token], [out.logits[:, -1]]
            for t in range(steps - 1):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(input_ids=token, attention_mask=mask, position_ids=torch.tensor([[n_full + t]]),
                            cache=cache, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
                logits.append(out.logits[:, -1])
        finally:
            handle.remove()
    assert torch.equal(torch.cat(tokens, 1), gen.sequences[:, n_full:])
    for mine, theirs in zip(logits, gen.scores):
        assert torch.allclose(mine, theirs, atol=1e-5)
    s = prunevid.stats(model)
    n1 = s["text_tokens"] + s["visual_tokens_stage1"]
    assert positions_seen[1].item() == n1          # the first new token continues the merged prefill's count


def test_decode_without_positions_uses_the_merged_count(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=8, seed=6)
    prunevid.apply(model, selected_layer=K)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        s = prunevid.stats(model)
        n1 = s["text_tokens"] + s["visual_tokens_stage1"]
        cache = _cache(out)
        snapshot = [(l.keys.clone(), l.values.clone()) for l in cache.layers]
        a = model(input_ids=token, cache=cache).logits
        for layer, (k, v) in zip(cache.layers, snapshot):
            layer.keys, layer.values = k, v
        prunevid.state.get(model).decode.update(seen=0, cache_len=snapshot[0][0].shape[-2], next_pos=n1)
        b = model(input_ids=token, position_ids=torch.tensor([[inputs["input_ids"].shape[1]]]), cache=cache).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_eager_attention_gives_the_same_pruned_result(tiny, tiny_eager):
    (sdpa_model, tok), (eager_model, _) = tiny, tiny_eager
    eager_model.load_state_dict(sdpa_model.state_dict())
    inputs = make_inputs(sdpa_model, tok, frames=8, seed=2)
    try:
        outs = []
        for m in (sdpa_model, eager_model):
            prunevid.apply(m, selected_layer=K)
            with torch.no_grad():
                outs.append((m(**inputs).logits, prunevid.stats(m)))
    finally:
        prunevid.remove(sdpa_model)
        prunevid.remove(eager_model)
    assert outs[0][1] == outs[1][1]
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)


@pytest.mark.parametrize("options", [{"stage1": False}, {"stage2": False}, {"scoring": "rope_causal"},
                                     {"score_reduce": "mean"}, {"seed": None}])
def test_options_run_and_prune(model_tok, options):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=4)
    prunevid.apply(model, selected_layer=K, **options)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    s = prunevid.stats(model)
    assert s["visual_tokens_stage2"] < s["visual_tokens_in"]
    if options.get("stage1") is False:
        assert s["visual_tokens_stage1"] == s["visual_tokens_in"]
        assert s["visual_tokens_stage2"] == 4 * int(49 * 0.4)              # per-frame groups
    if options.get("stage2") is False:
        assert s["visual_tokens_stage2"] == s["visual_tokens_stage1"]


def test_rope_causal_scoring_changes_the_scores(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=4, seed=9)
    scores = []
    for scoring in ("official", "rope_causal"):
        prunevid.apply(model, selected_layer=K, scoring=scoring)
        with torch.no_grad():
            model(**inputs)
        scores.append(prunevid.state.last_plan(model).scores)
    assert scores[0].shape == scores[1].shape and not torch.allclose(scores[0], scores[1])


# ------------------------------------------------------------------------------------------------ errors
def test_bad_input_gets_clear_errors(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="beyond the language model's depth"):
        prunevid.apply(model, selected_layer=4)
    with pytest.raises(ValueError, match="alpha"):
        prunevid.apply(model, alpha=1.5)
    with pytest.raises(ValueError, match="no parameter"):
        prunevid.apply(model, alhpa=0.3)
    with pytest.raises(ValueError, match="unknown method"):
        prunevid.apply(model, method="fastvv")
    prunevid.apply(model, selected_layer=K)
    inputs = make_inputs(model, tok, frames=4)
    short = dict(inputs, input_ids=inputs["input_ids"][:, 3:], attention_mask=inputs["attention_mask"][:, 3:])
    bad = dict(short, pixel_values_videos=inputs["pixel_values_videos"][:, :3])
    with pytest.raises(ValueError, match="placeholders"):
        model(**bad)
    batch = make_inputs(model, tok, frames=4, batch=2)
    with pytest.raises(ValueError, match="batch size 1"):
        model(**batch)
    with pytest.raises(ValueError, match="input_ids"):
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
              pixel_values_videos=inputs["pixel_values_videos"])


def test_stats_needs_a_patched_model(tiny):
    with pytest.raises(ValueError, match="not patched"):
        prunevid.stats(tiny[0])


def test_unsupported_model_is_named():
    with pytest.raises(ValueError, match="no PruneVid patch for Linear"):
        prunevid.apply(torch.nn.Linear(2, 2))


def test_small_config_without_spatial_merging():
    """56 px / 14 px patches -> 4 tokens per frame: every group is <= 14 tokens, nothing is merged spatially."""
    from prunevid.models.tiny import build_tiny_llava_onevision
    model, tok = build_tiny_llava_onevision(image_size=56, patch_size=14)
    inputs = make_inputs(model, tok, frames=8)
    with torch.no_grad():
        ref = model(**inputs).logits
        prunevid.apply(model, stage1=False, stage2=False, selected_layer=K)
        assert torch.equal(model(**inputs).logits, ref)
        prunevid.apply(model, selected_layer=K, alpha=0.5)
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    s = prunevid.stats(model)
    assert s["visual_tokens_in"] == 32
    # stage 1 only averages static locations over time: per segment S_i = #static, D_i = #dynamic
    assert all(st + d // w <= 4 for st, d, w in zip(s["static_tokens"], s["dynamic_tokens"], s["segments"]))
    assert s["visual_tokens_stage2"] == kept_count(s["static_tokens"], s["dynamic_tokens"], s["segments"], 0.5)


def test_two_frame_video_is_one_segment(model_tok):
    model, tok = model_tok
    inputs = make_inputs(model, tok, frames=2)
    prunevid.apply(model, selected_layer=K)
    with torch.no_grad():
        model(**inputs)
    assert prunevid.stats(model)["segments"] == [2]
