"""PLLaVA built from transformers parts: the released checkpoint layout loads, LoRA alpha is a run-time knob."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig

from prunevid.models import pllava_modeling as pm
from prunevid.models.tiny import build_byte_tokenizer


def tiny_pllava(lora_alpha=14.0):
    tok = build_byte_tokenizer()
    cfg = pm.PllavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=56, patch_size=8).to_dict(),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=4, vocab_size=len(tok), pad_token_id=tok.pad_token_id).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        pooling_shape=[4, 7, 7], num_frames=4, lora_r=8, lora_alpha=lora_alpha)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = pm.PllavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():                                   # non-zero adapters, so alpha matters
        for m in model.modules():
            if isinstance(m, pm.LoraLinear):
                m.lora_B.weight.normal_(0, 0.5)
    return model, tok


def released_key(ours: str) -> str:
    """The key a released checkpoint (transformers 4.37 + peft 0.10, external-formats.md §6.4) stores."""
    if ours.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + ours[len("model.vision_tower."):]
    if ours.startswith("model.multi_modal_projector."):
        return ours[len("model."):]
    if ours.startswith("lm_head."):
        return "language_model.base_model.model." + ours
    rest = ours[len("model.language_model."):]
    rest = rest.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
    return "language_model.base_model.model.model." + rest


def _inputs(model, frames=4):
    n = 4 * 49
    img = model.config.image_token_index
    ids = torch.tensor([[7, 8, 9] + [img] * n + [10, 11, 12, 13]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values_videos": torch.randn(1, frames, 3, 56, 56, generator=torch.Generator().manual_seed(1))}


def test_released_layout_loads_with_zero_missing_keys(tmp_path):
    model, _ = tiny_pllava()
    state = {released_key(k): v.contiguous() for k, v in model.state_dict().items()}
    for literal in ("vision_tower.vision_model.pre_layrnorm.weight",
                    "vision_tower.vision_model.embeddings.patch_embedding.weight",
                    "multi_modal_projector.linear_2.bias",
                    "language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
                    "language_model.base_model.model.model.layers.3.self_attn.v_proj.lora_B.default.weight",
                    "language_model.base_model.model.model.layers.1.self_attn.k_proj.weight",
                    "language_model.base_model.model.model.norm.weight",
                    "language_model.base_model.model.lm_head.weight"):
        assert literal in state, literal
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    (tmp_path / "model.safetensors-deprecated").write_bytes(b"ignored")
    model.config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llava"

    loaded = pm.from_pretrained(str(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    inputs = _inputs(model)
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_missing_weights_are_an_error(tmp_path):
    model, _ = tiny_pllava()
    state = {released_key(k): v.contiguous() for k, v in model.state_dict().items() if "lora_A" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        pm.from_pretrained(str(tmp_path))


def test_checkpoint_file_rule(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert pm.checkpoint_files(str(tmp_path)) == [str(tmp_path / "model.safetensors")]
    (tmp_path / "model-00001-of-00001.safetensors").write_bytes(b"")
    assert pm.checkpoint_files(str(tmp_path)) == [str(tmp_path / "model-00001-of-00001.safetensors")]


def test_lora_alpha_is_a_runtime_knob():
    model, _ = tiny_pllava(lora_alpha=14)
    inputs = _inputs(model)
    with torch.no_grad():
        a14 = model(**inputs).logits
        model.set_lora_alpha(4)
        a4 = model(**inputs).logits
        model.set_lora_alpha(14)
        again = model(**inputs).logits
    assert not torch.allclose(a14, a4) and torch.equal(a14, again)
    q = model.model.language_model.layers[0].self_attn.q_proj
    x = torch.randn(2, 64)
    assert torch.allclose(q(x), q.base_layer(x) + q.lora_B(q.lora_A(x)) * 14 / 8, atol=1e-6)


def test_video_features_are_pooled_frame_major():
    model, _ = tiny_pllava()
    pix = torch.randn(1, 4, 3, 56, 56)
    with torch.no_grad():
        feats = model.model.get_video_features(pix)
    assert feats.shape == (1, 4 * 7 * 7, 64)                      # 7x7 patches per frame, pooled to (4, 7, 7)
    with torch.no_grad():
        eight = model.model.get_video_features(torch.randn(1, 8, 3, 56, 56))
    assert eight.shape == (1, 8 * 49, 64)                          # other frame counts keep their length


def test_generate_and_placeholder_errors():
    model, _ = tiny_pllava()
    inputs = _inputs(model)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    bad = dict(inputs, input_ids=inputs["input_ids"][:, 5:], attention_mask=inputs["attention_mask"][:, 5:])
    with pytest.raises(ValueError, match="placeholders"):
        model(**bad)


def test_registry_loads_a_pllava_directory_and_prunes(tmp_path):
    import prunevid
    from prunevid import models, video
    from prunevid.models.tiny import build_tiny_pllava
    model, tok = build_tiny_pllava(lora_alpha=4)
    state = {released_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert loaded.spec.name == "pllava" and loaded.model.config.lora_alpha == 14     # the MC default
    assert loaded.preprocessing.crop and loaded.preprocessing.mean == models.CLIP_MEAN
    frames = torch.randint(0, 255, (8, 60, 90, 3), dtype=torch.uint8)
    inputs = video.build_inputs(loaded, frames, "Question: q?", system="Watch the video.\n", answer_prefix="Best option:(")
    text = loaded.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("Watch the video.\n USER: <image><image>") and text.endswith(" ASSISTANT:Best option:(")
    assert "<image>\n USER: Question: q? ASSISTANT:" in text
    prunevid.apply(loaded.model, selected_layer=1)
    with torch.no_grad():
        loaded.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    # upstream's load_pllava forces pooling_shape (16, 12, 12): 8 frames pool to 8 x 12 x 12
    assert prunevid.stats(loaded.model)["visual_tokens_in"] == 8 * 144
