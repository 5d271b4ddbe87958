"""FastVID (``fastvid``): its steps on hand-made tensors (expected numbers worked by hand from the transcription of
LunarShen/FastVID in ``prunevid/methods/fastvid.py``'s docstring), the whole reduction on a small video, the SigLIP
pooling head loaded from a path against the named fallback, the positions it keeps, matched budgets and the
``flops`` command on the tiny models."""
import json
import math

import pytest
import torch

import prunevid
from prunevid import methods
from prunevid.harness import budget, flops
from prunevid.harness.cli import main
from prunevid.methods import fastvid

from conftest import FRAMES

P = 49
N_IN = FRAMES * P


# ------------------------------------------------------------------------------------------------ the steps
def test_dyseg_cuts_by_hand():
    """Frames at 0, 0, 90, 90 and 135 degrees: adjacent cosines s = [1, 0, 1, cos 45 = 0.707]. c = 2: the one
    smallest (s_1) plus every s < 0.9 (s_1, s_3): cuts after frames 1 and 3 -> [2, 2, 1]. c = 1, tau 0.5: only
    s_1 -> [2, 3]. c = 8 is capped at F - 1 = 4 cuts -> five single frames."""
    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 1.0]])
    assert fastvid.dyseg_segments(e, 2, 0.9) == [2, 2, 1]
    assert fastvid.dyseg_segments(e, 1, 0.5) == [2, 3]
    assert fastvid.dyseg_segments(e, 8, -1.0) == [1, 1, 1, 1, 1]
    assert fastvid.dyseg_segments(e, 1, -1.0) == [5]
    assert fastvid.dyseg_segments(e[:1], 8, 0.9) == [1]


def test_stprune_and_anchor_counts_by_hand():
    # n = int(P r); salient n - int(n d); context int(n d)
    assert fastvid.stprune_counts(196, 0.10, 0.4) == (12, 7)       # 19: int(7.6) = 7 context
    assert fastvid.stprune_counts(196, 0.25, 0.4) == (30, 19)      # 49: int(19.6) = 19
    assert fastvid.stprune_counts(49, 0.10, 0.4) == (3, 1)         # 4: int(1.6) = 1
    assert fastvid.stprune_counts(196, 0.10, 0.0) == (19, 0)
    # segments 6, 2, 1 with 3 context tokens a frame, p = 4. L = 6: 18 // ceil(6/4) = 9 on frames 5 and 1 (every
    # 4th counting back from the last); L = 2: 6 // 1 = 6 on its last frame; L = 1: 3 (the single-frame path)
    assert fastvid.anchor_counts([6, 2, 1], 3, 4).tolist() == [0, 9, 0, 0, 0, 9, 0, 6, 3]
    # L = 3, p = 2, one context token: 3 // 2 = 1 on frames 0 and 2 — equal to n_c, so single-frame merges
    assert fastvid.anchor_counts([3], 1, 2).tolist() == [1, 0, 1]


def test_density_scores_by_hand():
    """Four tokens on a line at 0, 1, 3, 10 (each value in C = 4 channels: the distance 2|a - b| divided by
    sqrt(4) is |a - b|), 3 nearest (itself included). Mean squared distances 10/3, 5/3, 13/3, 130/3; the densest is
    token 1 (delta = the largest distance, 10); token 0's nearest denser is 1 (1 away), token 2's is 1 (2 away),
    token 3's is 2 (7 away)."""
    x = torch.tensor([0.0, 1.0, 3.0, 10.0])[None, :, None].expand(1, 4, 4)
    rho = torch.tensor([-10 / 3, -5 / 3, -13 / 3, -130 / 3]).exp()
    expected = torch.tensor([1.0, 10.0, 2.0, 7.0]) * rho
    torch.testing.assert_close(fastvid.density_scores(x, knn=3)[0], expected)
    noise = torch.tensor([[0.0, 0.0, 0.0, 1.0]])                  # added to rho: token 3 becomes the densest
    assert fastvid.density_scores(x, knn=3, noise=noise)[0, 3] == pytest.approx(10 * (1 + math.exp(-130 / 3)))


def test_dtm_merge_by_hand():
    """Anchors (1, 0) and (0, 2); tokens: the two anchors, (3, 1) (closer to the first by cosine) and (1, 4)
    (closer to the second). Each anchor holds itself and one token: w = max(1/3, 0.6) = 0.6 ->
    0.6 (1, 0) + 0.4 mean((1, 0), (3, 1)) = (1.4, 0.2) and 0.6 (0, 2) + 0.4 (0.5, 3) = (0.2, 2.4); beta 0:
    w = 1/3 -> (5/3, 1/3). A duplicate anchor gets nothing (argmax takes the first): w = 1, unchanged."""
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 4.0]]])
    torch.testing.assert_close(fastvid.dtm_merge(anchors, tokens, 0.6), torch.tensor([[[1.4, 0.2], [0.2, 2.4]]]))
    torch.testing.assert_close(fastvid.dtm_merge(anchors, tokens, 0.0)[0, 0], torch.tensor([5 / 3, 1 / 3]))
    dup = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    out = fastvid.dtm_merge(dup, torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]]]), 0.6)
    torch.testing.assert_close(out[0, 1], torch.tensor([2.0, 0.0]))


def _video(f=3, p=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(f, p, c, generator=g), torch.rand(f, p, generator=g)


def test_reduce_single_frame_segments():
    """3 frames of 6 tokens, retain 0.5: n = 3, 2 salient (the top saliency) + 1 anchor per frame; orthogonal frame
    embeddings cut everywhere. The anchor is the top density score among the 4 others, merged by ``dtm_merge``."""
    frames, sal = _video()
    emb = torch.eye(3)
    tokens, kept, info = fastvid.fastvid_reduce(frames, sal, emb, 0.5, c=8, tie_noise=False)
    assert info["segments"] == [1, 1, 1] and info["anchors_per_frame"] == [1, 1, 1]
    assert kept.sum(1).tolist() == [3, 3, 3] and tokens.shape == (9, 4)
    out = frames.clone()
    for f in range(3):
        top = sal[f].topk(2).indices
        assert kept[f, top].all()
        rest = [i for i in range(6) if i not in top.tolist()]
        cand = frames[f, rest][None]
        a = int(fastvid.density_scores(cand).argmax())
        out[f, rest[a]] = fastvid.dtm_merge(cand[:, a:a + 1], cand, 0.6)[0, 0]
        assert kept[f, rest[a]]
    torch.testing.assert_close(tokens, out[kept])                   # frame-major, raster order


def test_reduce_multi_frame_segment_merges_the_whole_segment():
    """One segment of 3 frames (identical embeddings, c = 1, tau -1), p = 4: ceil(3/4) = 1 anchor frame, the last,
    holding 3 x 1 = 3 anchors chosen by its own density scores; all 12 non-salient tokens of the segment merge
    into them."""
    frames, sal = _video(seed=1)
    emb = torch.ones(3, 2)
    tokens, kept, info = fastvid.fastvid_reduce(frames, sal, emb, 0.5, c=1, tau=-1.0, tie_noise=False)
    assert info["segments"] == [3] and info["anchors_per_frame"] == [0, 0, 3]
    assert kept.sum(1).tolist() == [2, 2, 5] and tokens.shape[0] == 9
    rest = [[i for i in range(6) if i not in sal[f].topk(2).indices.tolist()] for f in range(3)]
    pool = torch.stack([frames[f, rest[f]] for f in range(3)]).reshape(1, 12, 4)
    own = frames[2, rest[2]][None]
    idx = fastvid.density_scores(own).topk(3).indices[0]
    merged = fastvid.dtm_merge(own[:, idx], pool, 0.6)[0]
    for j, i in enumerate(idx.tolist()):
        assert kept[2, rest[2][i]]
        row = int(kept.reshape(-1)[:2 * 6 + rest[2][i]].sum())      # its row among the kept tokens
        torch.testing.assert_close(tokens[row], merged[j])


def test_config_errors():
    for params, match in (({"retain": 0.0}, "retain"), ({"retain": 1.5}, "retain"), ({"c": 0}, "c must"),
                          ({"p": 0}, "p must"), ({"d": 1.5}, "d must"), ({"beta": -0.1}, "beta"),
                          ({"tau": 2.0}, "tau"), ({"knn": 0}, "knn"), ({"pooling_head": "/no/such/head"}, "not found"),
                          ({"positions": "x"}, "positions")):
        with pytest.raises(ValueError, match=match):
            methods.make_config("fastvid", params)
    cfg = fastvid.FastVIDConfig()
    assert (cfg.retain, cfg.c, cfg.tau, cfg.d, cfg.p, cfg.beta, cfg.pooling_head, cfg.positions) == \
        (0.10, 8, 0.9, 0.4, 4, 0.6, None, "original")


# ----------------------------------------------------------------------------------------- on the tiny model
def _run(model, inputs, **params):
    prunevid.apply(model, method="fastvid", **params)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
        return logits, prunevid.stats(model), prunevid.patch.info(model), dict(prunevid.state.get(model).vision or {})
    finally:
        prunevid.remove(model)


@pytest.mark.parametrize("retain", [0.1, 0.25, 0.5])
def test_budget_within_two_points(tiny, tiny_inputs, retain):
    model, _ = tiny
    rec = budget.run_at_budget(model, tiny_inputs, "fastvid", retain)
    assert rec["reachable"] and abs(rec["achieved"] - retain) <= 0.02, rec
    assert budget.budget_params("fastvid", retain) == ({"retain": retain}, None)


def test_fallback_signals_and_original_positions(tiny, tiny_inputs):
    """Without a head: the fallback; every kept token enters at its own position, and decoding continues from the
    unreduced length (upstream's ``position_ids = keep_indexs``)."""
    model, _ = tiny
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        _, st, info, vision = _run(model, tiny_inputs, retain=0.25)
    finally:
        handle.remove()
    assert info["signals"] == fastvid.FALLBACK and vision["rule"] == "received"
    first = int((tiny_inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    pos = seen[0][0]
    n_vis = st["visual_tokens_stage1"]
    assert pos[first - 1] == first - 1 and bool((pos[first:first + n_vis].diff() > 0).all())
    assert pos[-1] == tiny_inputs["input_ids"].shape[1] - 1


def _save_head(path, dim, heads, mlp, seed=0):
    torch.manual_seed(seed)
    head = fastvid.SigLIPPoolingHead(dim, heads, mlp)
    with torch.no_grad():
        head.probe.normal_()
    names = {ours: "vision_model." + theirs for theirs, ours in fastvid._HEAD_KEYS.items()}
    torch.save({names[k]: v for k, v in head.state_dict().items()}, path)
    (path.parent / "config.json").write_text(json.dumps({"vision_config": {"num_attention_heads": heads}}))
    return head


def test_pooling_head_from_a_path(tiny, tiny_inputs, tmp_path):
    """A SigLIP head saved under HF names is loaded, run on the feature layer's output: its probe attention is the
    saliency (before the model's pooling) and its pooled output the frame embedding."""
    model, _ = tiny
    vc = model.config.vision_config
    head = _save_head(tmp_path / "head.pt", vc.hidden_size, vc.num_attention_heads, vc.intermediate_size)
    loaded = fastvid.load_pooling_head(str(tmp_path))
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    _, st, info, vision = _run(model, tiny_inputs, retain=0.25, pooling_head=str(tmp_path / "head.pt"))
    assert info["signals"] == "pooling_head" and vision["rule"] == "pooling_head"
    with torch.no_grad():
        videos = tiny_inputs["pixel_values_videos"][0]
        hidden = model.model.vision_tower(videos, output_hidden_states=True).hidden_states[-1]
        emb, attn = head(hidden)
    torch.testing.assert_close(vision["importance"], attn)
    torch.testing.assert_close(vision["frame_embedding"], emb)
    assert abs(st["retained_ratio"] - 0.25) <= 0.02
    with pytest.raises(ValueError, match="no SigLIP pooling head"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        fastvid.load_pooling_head(str(tmp_path / "other.pt"))


def test_flops_command(capsys):
    """LLaVA-OneVision-7B, the default retain 0.1: every layer on 627.2 of 6272 tokens (the analytic count)."""
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "fastvid", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "fastvid" and 0.05 < out["flops_ratio"] < 0.15
    assert flops.method_schedule("fastvid", 28, 6272).tokens == [627.2] * 28 or \
        flops.method_schedule("fastvid", 28, 6272).tokens == pytest.approx([627.2] * 28)


@pytest.mark.slow
def test_bench_runs_the_method(capsys):
    assert main(["bench", "--preset", "tiny", "--method", "fastvid", "--frames", "4", "--repeats", "1", "--dtype",
                 "float32", "--no-memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "fastvid" and out["ideal_speedup"] > 1 and out["prefill_speedup"] > 0
