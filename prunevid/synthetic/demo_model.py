"""The demo video LLM of the synthetic benchmark: its tokenizer and its (untrained) architecture.

The model is a plain ``LlavaOnevisionForConditionalGeneration``: a small SigLIP vision tower (112 px frames,
8 px patches -> 14 x 14 patches, pooled to 7 x 7 = 49 tokens per frame) and a small Qwen2 language model.
``data_scripts/train_demo_model.py`` trains it on :mod:`prunevid.synthetic`, the world it lives in.

The tokenizer is word-level over the benchmark's closed vocabulary (every word of the official MVBench prompt
and of the generator's questions, answers and captions, with and without a leading space) plus the 256
byte-level symbols for anything else, so every string round-trips exactly: newlines, ``Best option:(``,
``(A)``, punctuation, and words it has never seen (spelled out byte by byte).
"""
from __future__ import annotations

import re
from typing import Iterable, List, Optional

import torch

from ..models.tiny import LLAVA_ONEVISION_CHAT_TEMPLATE, SPECIAL_TOKENS
from .questions import SYNTHETIC_ANSWER_PREFIX, SYNTHETIC_SYSTEM, synthetic_question, vocabulary_strings

WORD_RE = re.compile(r"[A-Za-z]+")


def demo_words(extra: Iterable[str] = ()) -> List[str]:
    """The closed word list: every alphabetic word of the benchmark's fixed strings (sorted, unique)."""
    words = set()
    for s in list(vocabulary_strings()) + list(extra):
        words.update(WORD_RE.findall(s))
    return sorted(w for w in words if len(w) > 1)


def build_demo_tokenizer(extra_words: Iterable[str] = ()):
    """A ``PreTrainedTokenizerFast``: special tokens, 256 byte symbols, then each known word and its
    space-prefixed form as single tokens; the LLaVA-OneVision chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_syms = sorted(pre_tokenizers.ByteLevel.alphabet())
    space = "\u0120"                     # the byte-level symbol of " "
    words = demo_words(extra_words)
    pieces = words + [space + w for w in words]
    vocab = {}
    for tok in SPECIAL_TOKENS + byte_syms + pieces:
        vocab.setdefault(tok, len(vocab))
    # After the byte-level mapping, split into known words (longest first, whole words only) or single symbols.
    alternation = "|".join(sorted(pieces, key=lambda p: (-len(p), p)))
    split = pre_tokenizers.Split(Regex(f"(?:{alternation})(?![A-Za-z])|."), behavior="isolated")
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                                                split])
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>", "<image>", "<video>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>", "<video>"]})
    tok.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE
    return tok


SIZES = {
    # name: (vision hidden, vision layers, vision heads, LM hidden, LM layers, LM heads, LM kv heads)
    "xs": (64, 2, 2, 96, 2, 4, 2),
    "s": (96, 2, 4, 128, 3, 4, 2),
    "s4": (96, 2, 4, 128, 4, 4, 2),
    "m": (128, 3, 4, 192, 4, 4, 2),
    "s8": (96, 2, 4, 128, 8, 4, 2),        # s4's towers with twice the LLM depth (issue 24: grown from s4)
}


def demo_config(tokenizer, size: str = "s", *, image_size: int = 112, patch_size: int = 8,
                attn_implementation: str = "sdpa"):
    from ..models.tiny import tiny_llava_onevision_config

    vh, vl, vheads, h, layers, heads, kv = SIZES[size]
    return tiny_llava_onevision_config(tokenizer, image_size=image_size, patch_size=patch_size, vision_hidden=vh,
                                       vision_layers=vl, vision_heads=vheads, hidden=h, layers=layers, heads=heads,
                                       kv_heads=kv, ffn_mult=4, tie_word_embeddings=True, max_position_embeddings=4096,
                                       attn_implementation=attn_implementation, rope_theta=10000.0)


def zero_init_residuals(model) -> None:
    """Zero the output projections of every residual branch (attention out / MLP down, both towers), so each
    block starts as the identity; the embeddings and the other weights keep their random init."""
    names = ("o_proj", "down_proj", "out_proj", "fc2")
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.rsplit(".", 1)[-1] in names and isinstance(mod, torch.nn.Linear):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()


def build_demo_model(tokenizer=None, size: str = "s", *, seed: int = 0, zero_residuals: bool = True,
                     attn_implementation: str = "sdpa"):
    """(model, tokenizer): the untrained demo model in train mode."""
    from transformers import LlavaOnevisionForConditionalGeneration

    tok = tokenizer if tokenizer is not None else build_demo_tokenizer()
    cfg = demo_config(tok, size, attn_implementation=attn_implementation)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(cfg)
        with torch.no_grad():
            model.model.image_newline.normal_(0, 0.02)
        if zero_residuals:
            zero_init_residuals(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def render_prompt(tokenizer, question: str, candidates: List[str], *, num_video_tokens: Optional[int] = None) -> str:
    """The official MVBench prompt in the chat template: system turn, user turn with the video and the question
    block, then the assistant answer prefix ``Best option:(``."""
    from ..video import build_prompt
    prompt = build_prompt(tokenizer, synthetic_question(question, candidates), system=SYNTHETIC_SYSTEM,
                          answer_prefix=SYNTHETIC_ANSWER_PREFIX)
    if num_video_tokens is not None:
        prompt = prompt.replace("<video>", "<video>" * num_video_tokens)
    return prompt
