"""The scores computed from q/k under SDPA equal the attention maps an eager model returns."""
import pytest
import torch

import prunevid
from prunevid.models.tiny import build_tiny_llava_onevision


@pytest.fixture(scope="module")
def eager():
    return build_tiny_llava_onevision(attn_implementation="eager")[0]   # same seed: same weights as `tiny`


@pytest.mark.parametrize("score", ["last", "all"])
def test_fastv_scores_equal_eager_attention_of_layer_k_minus_1(tiny, tiny_inputs, eager, score):
    model, _ = tiny
    K = 2
    prunevid.apply(model, method="fastv", K=K, score=score)
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        plan = prunevid.state.last_plan(model)
    finally:
        prunevid.remove(model)
    with torch.no_grad():
        att = eager(**tiny_inputs, output_attentions=True).attentions[K - 1][0]   # (H, N, N)
    vis = slice(plan.visual_start, plan.visual_start + plan.visual_len)
    expected = att.mean(0)[-1, vis] if score == "last" else att.mean(0).mean(0)[vis]
    torch.testing.assert_close(plan.scores, expected, rtol=1e-4, atol=1e-6)
    kept = plan.keep[(plan.keep >= vis.start) & (plan.keep < vis.stop)] - vis.start
    assert torch.equal(kept, expected.topk(plan.visual_len // 2).indices.sort().values)


def test_vision_importance_equals_eager_siglip_attention(tiny, tiny_inputs, eager):
    model, _ = tiny
    prunevid.apply(model, method="visionzip")
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        importance = prunevid.state.get(model).vision["importance"]                         # (F, Np) before pooling
    finally:
        prunevid.remove(model)
    pix = tiny_inputs["pixel_values_videos"][0]
    with torch.no_grad():
        att = eager.model.vision_tower(pix, output_attentions=True).attentions[-1]   # (F, H, Np, Np)
    torch.testing.assert_close(importance, att.mean(1).mean(1), rtol=1e-4, atol=1e-7)
