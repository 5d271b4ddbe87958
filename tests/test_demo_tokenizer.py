"""The demo model's tokenizer round-trips every official MVBench prompt exactly; the model loads as a checkpoint."""
import numpy as np
import pytest
import torch

from prunevid import synthetic as S
from prunevid.synthetic import demo_model as D
from prunevid.models.tiny import LLAVA_ONEVISION_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tok():
    return D.build_demo_tokenizer()


def _roundtrip(tok, s):
    ids = tok(s, add_special_tokens=False).input_ids
    assert tok.decode(ids) == s
    return ids


def test_official_prompts_round_trip_exactly(tok):
    rng = np.random.default_rng(0)
    for task in S.TASKS:
        for i in range(5):
            s = S.make_item(task, rng, extras=True)
            p = D.render_prompt(tok, s.item["question"], s.item["candidates"], num_video_tokens=785)
            assert p.startswith("<|im_start|>system\n" + S.SYNTHETIC_SYSTEM + "<|im_end|>\n<|im_start|>user\n<video>")
            assert "\nOptions:\n(A) " in p and p.endswith(
                "\nOnly give the best option.<|im_end|>\n<|im_start|>assistant\nBest option:(")
            ids = _roundtrip(tok, p)
            assert ids.count(tok.convert_tokens_to_ids("<video>")) == 785
            for q in [s.item, *s.extra.values()]:
                for c in q["candidates"]:
                    _roundtrip(tok, S.mvbench_answer(q["candidates"], c)[1:] + "<|im_end|>\n")
            _roundtrip(tok, s.caption)


def test_known_words_are_single_tokens_and_anything_else_falls_back(tok):
    toks = tok.convert_ids_to_tokens(_roundtrip(tok, "Best option:(B) red"))
    assert toks == ["Best", "\u0120option", ":", "(", "B", ")", "\u0120red"]
    for w in S.COLOR_NAMES + S.SHAPES + S.SCENE_NAMES + S.DIRECTIONS + S.NUMBERS + S.YES_NO:
        assert len(tok(" " + w, add_special_tokens=False).input_ids) == 1, w
    for s in ["Héllo wörld\t!! 123 (A) redd", "\n\n  (E) \u4e2d\u6587", "", "a", "<video>\n<|im_end|>"]:
        _roundtrip(tok, s)
    # the special tokens are single ids and never produced from ordinary text
    assert len(tok("<video>", add_special_tokens=False).input_ids) == 1
    # the pad token never appears in the encoding of text
    assert tok.pad_token_id not in tok("red square", add_special_tokens=False).input_ids


def test_chat_template_is_the_kits(tok):
    assert tok.chat_template == LLAVA_ONEVISION_CHAT_TEMPLATE
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_demo_model_saves_and_loads_through_the_registry(tok, tmp_path):
    from prunevid import models, video
    model, _ = D.build_demo_model(tok, "xs", seed=0, zero_residuals=False)
    model.eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert loaded.preprocessing.size == S.FRAME_SIZE
    s = S.make_item("moving_direction", S.item_rng(0, "moving_direction", 0))
    text = S.synthetic_question(s.item["question"], s.item["candidates"])
    inputs = video.build_inputs(loaded, torch.from_numpy(s.frames), text, system=S.SYNTHETIC_SYSTEM,
                                answer_prefix=S.SYNTHETIC_ANSWER_PREFIX)
    n = inputs["input_ids"].eq(tok.convert_tokens_to_ids("<video>")).sum().item()
    assert n == S.NUM_FRAMES * 49 + 1
    assert tok.decode(inputs["input_ids"][0]) == D.render_prompt(tok, s.item["question"], s.item["candidates"],
                                                                 num_video_tokens=n)
    with torch.no_grad():
        a = loaded.model(**inputs).logits[0, -1]
        b = model(**inputs).logits[0, -1]
    assert torch.allclose(a, b, atol=1e-5)


def test_version_2_needs_no_new_words(tok):
    """The benchmark's version 2 asks in the same words: every word of its questions and options is already a known
    word (one token), and its prompts round-trip."""
    known = set(D.demo_words())
    for task in S.TASKS:
        for i in range(20):
            q = S.ask(task, S.item_rng(S.SPLIT_SEEDS_V2["test"], task, i))
            words = D.WORD_RE.findall(q["question"] + " " + " ".join(q["candidates"]))
            assert set(w for w in words if len(w) > 1) <= known, (task, q)
            _roundtrip(tok, D.render_prompt(tok, q["question"], q["candidates"], num_video_tokens=785))
            for c in q["candidates"]:
                _roundtrip(tok, S.mvbench_answer(q["candidates"], c)[1:] + "<|im_end|>\n")
