"""Tiny random LLaVA-OneVision models and an offline tokenizer, for tests, the quick demo and notebooks.

The default tiny model sees 112 px frames in 8 px patches: 14 x 14 patches pooled to 7 x 7 = 49 visual
tokens per frame, enough for PruneVid's spatial merging (groups of more than 14 tokens) to really run.
Weights are random: outputs are meaningless, but every shape, hook and cache path is the real one.
"""
from __future__ import annotations

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# The LLaVA-OneVision chat template, as its checkpoints render it: per message "<|im_start|>{role}\n", then
# "<image>\n" / "<video>\n" per visual item, then the text, then "<|im_end|>\n"; no default system message.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif item['type'] == 'video' %}{{ '<video>\\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Qwen2-VL's template, reduced to what the kit renders: a video item becomes
# "<|vision_start|><|video_pad|><|vision_end|>" before the text.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _instantiate(cls, cfg, tok, seed: int, attn_implementation: str):
    """(model, tokenizer): ``cls(cfg)`` with seeded random weights in eval mode, generation ids from ``tok``."""
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def build_byte_tokenizer():
    """A byte-level tokenizer (256 byte symbols, no merges) plus the Qwen/LLaVA special tokens.

    Every string round-trips exactly (newlines, ``Best option:(``, letters), which a word-level toy
    tokenizer does not; vocabulary 261.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {sym: i for i, sym in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None,
                                  additional_special_tokens=["<|im_start|>", "<image>", "<video>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>", "<video>"]})
    tok.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE
    return tok


def tiny_llava_onevision_config(tokenizer, *, image_size: int = 112, patch_size: int = 8, vision_hidden: int = 32,
                                vision_layers: int = 2, vision_heads: int = 2, hidden: int = 64, layers: int = 4,
                                heads: int = 4, kv_heads: int = 2, ffn_mult: int = 2, tie_word_embeddings: bool = False,
                                max_position_embeddings: int = 8192, attn_implementation: str = "sdpa", **text_kwargs):
    """A small ``LlavaOnevisionConfig`` (SigLIP + Qwen2) over ``tokenizer``'s vocabulary; ``text_kwargs`` go to
    ``Qwen2Config``."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=ffn_mult * vision_hidden,
                                num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=image_size,
                                patch_size=patch_size, vision_use_head=False)
    text = Qwen2Config(hidden_size=hidden, intermediate_size=ffn_mult * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
                       max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tie_word_embeddings, **text_kwargs)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                               video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                               vision_feature_layer=-1, vision_feature_select_strategy="full",
                               image_grid_pinpoints=[[image_size, image_size]],
                               tie_word_embeddings=tie_word_embeddings)
    cfg._attn_implementation = attn_implementation
    return cfg


def build_tiny_llava_onevision(*, seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """(model, tokenizer): a random tiny ``LlavaOnevisionForConditionalGeneration`` in eval mode."""
    from transformers import LlavaOnevisionForConditionalGeneration

    tok = build_byte_tokenizer()
    cfg = tiny_llava_onevision_config(tok, attn_implementation=attn_implementation, **config_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(cfg).eval()
        # Random init leaves the newline at zeros-ish scale; give it the scale of the other embeddings.
        with torch.no_grad():
            model.model.image_newline.normal_(0, 0.02)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def build_tiny_llava_next_video(*, seed: int = 0, attn_implementation: str = "sdpa", image_size: int = 112,
                                patch_size: int = 8, hidden: int = 64, layers: int = 4):
    """(model, tokenizer): a random tiny ``LlavaNextVideoForConditionalGeneration`` (CLIP tower, 2x2 pooling:
    14x14 patches -> 49 tokens per frame, no newline)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    tok = build_byte_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=8192,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaNextVideoConfig(vision_config=vision, text_config=text,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"),
                               vision_feature_layer=-2, vision_feature_select_strategy="default",
                               spatial_pool_stride=2, spatial_pool_mode="average",
                               image_grid_pinpoints=[[image_size, image_size]], tie_word_embeddings=False)
    return _instantiate(LlavaNextVideoForConditionalGeneration, cfg, tok, seed, attn_implementation)


def build_tiny_pllava(*, seed: int = 0, attn_implementation: str = "sdpa", image_size: int = 112, patch_size: int = 8,
                      frames: int = 8, lora_alpha: float = 14.0, hidden: int = 64, layers: int = 4):
    """(model, tokenizer): a random tiny PLLaVA (CLIP tower 14x14 patches, pooled to (frames, 7, 7) = 49 tokens
    per frame, Llama LLM with LoRA r=8 on q/v whose adapters are non-zero so lora_alpha matters)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from .pllava import PLLAVA_CHAT_TEMPLATE
    from .pllava_modeling import LoraLinear, PllavaConfig, PllavaForConditionalGeneration

    tok = build_byte_tokenizer()
    tok.chat_template = PLLAVA_CHAT_TEMPLATE
    side = image_size // patch_size
    cfg = PllavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=image_size, patch_size=patch_size).to_dict(),
        text_config=LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tok),
                                max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                                eos_token_id=tok.eos_token_id).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        pooling_shape=[frames, side // 2, side // 2], num_frames=frames, frame_shape=[side, side],
        lora_r=8, lora_alpha=lora_alpha)
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PllavaForConditionalGeneration(cfg).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, LoraLinear):
                    m.lora_B.weight.normal_(0, 0.2)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def build_tiny_qwen2_vl(*, version: str = "2.5", seed: int = 0, attn_implementation: str = "sdpa", layers: int = 4):
    """(model, tokenizer): a random tiny Qwen2.5-VL (``version="2.5"``) or Qwen2-VL (``"2"``): patch 14, merge 2,
    temporal patch 2, so 112 px frames give 4 x 4 = 16 tokens per temporal patch of 2 frames."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    tok = build_byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>", "<video>", "<|video_pad|>",
                                                          "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]})
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    if version == "2.5":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        cfg, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), Qwen2_5_VLForConditionalGeneration
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        cfg, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    return _instantiate(cls, cfg, tok, seed, attn_implementation)


# The kit's tiny models by name: (builder, the registry entry of its architecture, builder kwargs).
# ``prunevid.models.load(name)`` builds them.
TINY_MODELS = {
    "tiny": (build_tiny_llava_onevision, "llava_onevision", {}),
    "tiny-llava-next-video": (build_tiny_llava_next_video, "llava_next_video", {}),
    "tiny-pllava": (build_tiny_pllava, "pllava", {}),
    "tiny-qwen2.5-vl": (build_tiny_qwen2_vl, "qwen2_vl", {"version": "2.5"}),
    "tiny-qwen2-vl": (build_tiny_qwen2_vl, "qwen2_vl", {"version": "2"}),
}
