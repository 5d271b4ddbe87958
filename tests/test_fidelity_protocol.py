"""The official protocol against PruneVid's evaluation code (``tasks/eval/``), item by item.

Expected strings and numbers are written out here, transcribed from upstream (``eval_utils.py``
``Conversation.get_prompt`` / ``user_query``, ``model_utils.pllava_answer`` / ``KeywordsStoppingCriteria``,
``mvbench/pllava_eval_mvbench.infer_mvbench``, ``vcgbench/__init__.check_ans``, ``scripts/eval.sh``), not
produced by the kit's code.
"""
import json
import os

import pytest

import fixtures
from prunevid import benchmarks, models, video
from prunevid.harness import item, results, runner
from prunevid.benchmarks import Item, ProtocolOptions
from prunevid.benchmarks.base import official_mc_score, official_pred
from prunevid.benchmarks.vcg_judge import Judge, parse_score
from prunevid.models.pllava import PLLAVA_CHAT_TEMPLATE
from prunevid.models.tiny import build_byte_tokenizer

ITEM = Item(id="x", category="c", video="v.mp4", question="What happened after the person took the food?",
            candidates=["Ate the medicine.", "Tidied up the blanket.", "Put down the cup."],
            answer="Tidied up the blanket.")

SYSTEM_MVBENCH = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                  "movement of objects, and the action and pose of persons. Based on your observations, select the "
                  "best option that accurately addresses the question.\n")
SYSTEM_VIDEOMME = ("Select the best answer to the following multiple-choice question based on the video. Respond with "
                   "only the letter (A, B, C, or D) of the correct option.\n")
QUESTION_TAIL = ("Question: What happened after the person took the food?\nOptions:\n(A) Ate the medicine.\n"
                 "(B) Tidied up the blanket.\n(C) Put down the cup. \nOnly give the best option.")


def pllava_tokenizer():
    tok = build_byte_tokenizer()
    tok.chat_template = PLLAVA_CHAT_TEMPLATE
    return tok


def render(bench_name, item, protocol="official", tok=None):
    bench = benchmarks.get(bench_name)
    tok = tok or pllava_tokenizer()
    return [video.build_prompt(tok, p.text, system=p.system, answer_prefix=p.answer_prefix)
            for p in bench.prompts(item, protocol)]


# --- 1. prompt strings --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bench,system", [("mvbench", SYSTEM_MVBENCH), ("egoschema", SYSTEM_MVBENCH),
                                          ("videomme", SYSTEM_VIDEOMME)])
def test_multiple_choice_prompt_is_upstreams_string(bench, system):
    # conv_eval_mvbench / conv_eval_videomme: system + " ", "USER: " + "<image>\n" + " ",
    # "USER: " + query + " " + post_query_prompt + " ", "ASSISTANT:" + "Best option:("
    want = system + " USER: <image>\n USER: " + QUESTION_TAIL + " ASSISTANT:Best option:("
    assert render(bench, ITEM) == [want]


def test_vcg_prompt_is_upstreams_string():
    item = Item(id="consistency/0", category="consistency", video="v.mp4", question="What colour is the square?",
                answer="White.", extra={"question2": "Which colour does it have?"})
    system = ("You are Video-ChatGPT, a large vision-language assistant. You are able to understand the video content "
              "that the user provides, and assist the user with a variety of tasks using natural language.Follow the "
              "instructions carefully and explain your answers in detail based on the provided video.")
    assert render("vcgbench", item) == [system + " USER: <image>\n USER: What colour is the square? ASSISTANT:",
                                        system + " USER: <image>\n USER: Which colour does it have? ASSISTANT:"]


def test_synthetic_prompt_stays_frozen():
    """The demo model was trained on the earlier reading (no newline after the system text, no space before the
    post prompt): the synthetic benchmark keeps it under its own name."""
    tok = build_byte_tokenizer()          # the LLaVA-OneVision template the demo model uses
    got = render("synthetic", ITEM, tok=tok)[0]
    assert got == ("<|im_start|>system\n" + SYSTEM_MVBENCH.rstrip("\n") + "<|im_end|>\n<|im_start|>user\n<video>\n"
                   + QUESTION_TAIL.replace(" \nOnly", "\nOnly") + "<|im_end|>\n<|im_start|>assistant\nBest option:(")


# --- 6. answer extraction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("generated,after", [
    ("B) Tidied up the blanket.", "B) Tidied up the blanket."),
    ("B) x Best option:(C) y", "B) x C) y"),             # every piece after the first prefix, joined
    ("B)\n ASSISTANT: C) no prefix here", ""),             # the last ASSISTANT: discards the prefix
    ("  B)  ", "  B)"),          # the whole assistant text is stripped, so only the trailing blanks go
])
def test_official_answer_extraction(generated, after):
    assert official_pred(generated) == ("(" + after, after)


def test_kit_answer_fix_is_named_and_counted():
    assert official_pred("B) x Best option:(C) y", rule="last_prefix")[1] == "C) y"
    s = official_mc_score(ITEM, "B)\n ASSISTANT: C) no prefix here")
    assert s.unparsed and not s.fallback
    s = official_mc_score(ITEM, "B)\n ASSISTANT: C) no prefix here", rule="last_prefix")
    assert (s.parsed, s.correct, s.fallback) == ("B", True, True)


def test_vcg_answer_text():
    bench = benchmarks.get("vcgbench")
    assert bench.answer_text("  A white square.</s>", "official") == "A white square."
    assert bench.answer_text("A square. USER: hi ASSISTANT: It is white. ", "official") == "It is white."
    assert bench.answer_text("A square. ASSISTANT: x", "lmms-eval") == "A square. ASSISTANT: x"


def test_vcg_stop_rule_needs_both_keywords():
    tok = build_byte_tokenizer()
    stop = item.keywords_stop(tok)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert not stop(ids("x"))                              # never on the first token
    assert not stop(ids("answer ### more"))                # one keyword is not enough
    assert not stop(ids("answer USER more"))
    assert stop(ids("answer ### USER"))
    assert benchmarks.get("vcgbench").stops_on_keywords("official")
    assert not benchmarks.get("vcgbench").stops_on_keywords("lmms-eval")
    vcg = benchmarks.get("vcgbench")
    vcg.options = ProtocolOptions(stop_rule="eos")
    assert not vcg.stops_on_keywords("official")
    assert not benchmarks.get("mvbench").stops_on_keywords("official")


def test_greedy_generate_stops_on_the_rule(tiny_model_and_inputs):
    model, inputs = tiny_model_and_inputs
    toks, *_ = item.greedy_generate(model, inputs, 6, set())
    assert len(toks) == 6
    calls = []

    def stop(t):
        calls.append(len(t))
        return len(t) == 3
    toks2, *_ = item.greedy_generate(model, inputs, 6, set(), stop=stop)
    assert toks2 == toks[:3] and calls == [1, 2, 3]


@pytest.fixture(scope="module")
def tiny_model_and_inputs():
    from conftest import make_inputs
    loaded = models.load("tiny")
    return loaded.model, make_inputs(loaded.model, loaded.tokenizer, frames=2)


# --- 6. the judge -------------------------------------------------------------------------------------------
class FakeJudge(Judge):
    def __init__(self, replies, **kw):
        super().__init__("http://127.0.0.1:9", backoff_s=0.0, **kw)
        self.replies, self.seen = list(replies), []

    def _post(self, system, user):
        self.seen.append(user)
        return self.replies.pop(0)


def test_judge_parse_strict_vs_tolerant():
    assert parse_score("{'score': 4}", strict=True) == 4.0
    assert parse_score(" {'score': 4.8} ", strict=True) == 4.8
    assert parse_score("score: 4", strict=True) is None
    assert parse_score("score: 4") == 4.0
    item = Item(id="generic/0", category="generic", video="v", question="q?", answer="a")
    row = {"id": "generic/0", "category": "generic", "prediction": "p"}
    strict = FakeJudge(["score: 4"] * 9)              # never a literal: 3 tries per dimension, then 0
    assert strict.judge_row(row, item) == {"CI": 0.0, "DO": 0.0, "CU": 0.0}
    assert len(strict.seen) == 9 and strict.failures == 3
    tolerant = FakeJudge(["score: 4", "{'score': 2}", "score: 5"], parse="tolerant")
    assert tolerant.judge_row(row, item) == {"CI": 4.0, "DO": 2.0, "CU": 5.0, "fallback_parsed": 2}
    assert tolerant.fallback_parsed == 2


def test_judge_consistency_labels_follow_upstreams_swap():
    item = Item(id="consistency/0", category="consistency", video="v", question="Q-one?", answer="a",
                extra={"question2": "Q-two?"})
    row = {"id": "consistency/0", "category": "consistency", "prediction": "ans-one", "prediction2": "ans-two"}
    official = FakeJudge(["{'score': 3}"])
    official.judge_row(row, item)
    user = official.seen[0]
    # upstream's record after the swap: question = Q2, question1 = Q1; its prompt shows Question 1: {question}
    assert user.index("Q-two?") < user.index("Q-one?") < user.index("ans-one") < user.index("ans-two")
    matched = FakeJudge(["{'score': 3}"], consistency_labels="matched")
    matched.judge_row(row, item)
    assert matched.seen[0].index("Q-one?") < matched.seen[0].index("Q-two?")


def test_protocol_options_are_checked():
    assert ProtocolOptions().to_dict() == {"answer_parse": "official", "stop_rule": "official",
                                           "judge_parse": "strict", "consistency_labels": "official",
                                           "short_clips": "duplicate"}
    with pytest.raises(ValueError, match="unknown protocol option"):
        ProtocolOptions.from_dict({"answer_pars": "official"})
    with pytest.raises(ValueError, match="answer_parse"):
        ProtocolOptions.from_dict({"answer_parse": "first"})


# --- 2, 3. per-benchmark model settings and dtype -----------------------------------------------------------
def test_pllava_benchmark_defaults_follow_eval_sh():
    d = models.peek_defaults("tiny-pllava")
    assert models.benchmark_defaults(d, "vcgbench")["selected_layer"] == 5
    assert models.benchmark_defaults(d, "vcgbench")["lora_alpha"] == 4
    assert models.benchmark_defaults(d, "mvbench")["selected_layer"] == 10
    assert models.benchmark_defaults(d, "mvbench")["lora_alpha"] == 14


def test_default_dtype():
    assert models.default_dtype(models.peek_defaults("demo"), "official") == "float32"
    assert models.default_dtype(models.peek_defaults("tiny-pllava"), "official") == "float32"
    real = {"protocol": "official", "arch": "pllava", "kit_model": False}
    assert models.default_dtype(real, "official") == "bfloat16"
    assert models.default_dtype(real, "lmms-eval") == "float32"


def test_peek_defaults_reads_a_checkpoint_without_loading(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"architectures": ["LlavaOnevisionForConditionalGeneration"]}, f)
    d = models.peek_defaults(str(tmp_path))
    assert d["arch"] == "llava_onevision" and d["kit_model"] is False
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"architectures": ["LlavaForConditionalGeneration"], "pooling_shape": [16, 12, 12]}, f)
    assert models.peek_defaults(str(tmp_path))["arch"] == "pllava"
    assert models.peek_defaults(str(tmp_path / "nothing")) == {}


# --- runs on tiny-pllava: the recorded prompt, K / LoRA alpha, short clips -----------------------------------
@pytest.fixture(scope="module")
def datas(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datas"))
    fixtures.make_mvbench(root)
    fixtures.make_vcgbench(root)
    return root


@pytest.fixture(scope="module")
def tiny_pllava():
    return models.load("tiny-pllava")


def test_official_mvbench_run_records_upstreams_prompt(datas, tiny_pllava, tmp_path):
    runner.evaluate(benchmark="mvbench", model="tiny-pllava", data_root=datas, output_dir=str(tmp_path / "r"),
                    loaded=tiny_pllava, limit=1, frames=4, progress=False)
    row = results.RunWriter(str(tmp_path / "r")).read_samples()[0]
    q = ("Question: What happened after the person took the food?\nOptions:\n(A) Ate the medicine.\n"
         "(B) Tidied up the blanket.\n(C) Put down the cup.\n(D) Opened the door. \nOnly give the best option.")
    assert row["prompt"] == SYSTEM_MVBENCH + " USER: <image>\n USER: " + q + " ASSISTANT:Best option:("
    cfg = json.load(open(tmp_path / "r" / "run_config.json"))
    assert (cfg["selected_layer"], cfg["lora_alpha"], cfg["dtype"]) == (2, 14, "float32")   # 4 layers: K <= 2


@pytest.fixture(scope="module")
def deep_pllava():
    """A tiny PLLaVA with 20 decoder layers, so K 10 and K 5 are not clamped to the depth."""
    from prunevid.models.tiny import build_tiny_pllava
    model, tok = build_tiny_pllava(layers=20)
    return models.LoadedModel(model, tok, models.spec_for(model), models.VideoPreprocessing(size=112), "tiny-pllava-20")


@pytest.mark.parametrize("bench,k,alpha", [("vcgbench", 5, 4), ("mvbench", 10, 14)])
def test_pllava_runs_record_eval_sh_settings(bench, k, alpha, datas, deep_pllava, tmp_path):
    alpha_before = deep_pllava.model.config.lora_alpha
    runner.evaluate(benchmark=bench, model="tiny-pllava-20", data_root=datas, output_dir=str(tmp_path / "v"),
                    loaded=deep_pllava, limit=1, frames=4, progress=False, params={"stage1": False})
    cfg = json.load(open(tmp_path / "v" / "run_config.json"))
    assert (cfg["selected_layer"], cfg["method"]["selected_layer"], cfg["lora_alpha"]) == (k, k, alpha)
    res = json.load(open(tmp_path / "v" / "results.json"))
    assert (res["config"]["selected_layer"], res["config"]["lora_alpha"]) == (k, alpha)
    assert deep_pllava.model.config.lora_alpha == alpha_before          # given back as it came
    # the identity holds LoRA alpha: a rerun with another alpha is refused, not mixed
    with pytest.raises(ValueError, match="lora_alpha"):
        runner.evaluate(benchmark=bench, model="tiny-pllava-20", data_root=datas, output_dir=str(tmp_path / "v"),
                        loaded=deep_pllava, limit=1, frames=4, progress=False, params={"stage1": False},
                        lora_alpha=alpha + 1)


def test_vcg_on_the_4_layer_tiny_pllava_clamps_k(datas, tiny_pllava, tmp_path):
    runner.evaluate(benchmark="vcgbench", model="tiny-pllava", data_root=datas, output_dir=str(tmp_path / "v"),
                    loaded=tiny_pllava, limit=1, frames=4, progress=False, params={"stage1": False})
    cfg = json.load(open(tmp_path / "v" / "run_config.json"))
    assert (cfg["selected_layer"], cfg["lora_alpha"]) == (2, 4)          # K 5 > 4 // 2: the depth rule


def test_lora_alpha_is_for_pllava_only(datas, tmp_path):
    with pytest.raises(ValueError, match="PLLaVA"):
        runner.evaluate(benchmark="mvbench", model="tiny", data_root=datas, output_dir=str(tmp_path / "x"),
                        limit=1, frames=4, progress=False, lora_alpha=4)


def test_real_pllava_loads_with_upstreams_frames_pooling_and_template(tmp_path):
    from safetensors.torch import save_file
    from prunevid.models.tiny import build_tiny_pllava
    from test_pllava import released_key
    model, tok = build_tiny_pllava()
    model.config.pooling_shape = [4, 7, 7]
    state = {released_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    tok.chat_template = "{{ 'a template of the checkpoint' }}"
    tok.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert list(loaded.model.config.pooling_shape) == [16, 12, 12] and loaded.model.config.num_frames == 16
    assert loaded.tokenizer.chat_template == PLLAVA_CHAT_TEMPLATE


# --- 5. short clips -----------------------------------------------------------------------------------------
def test_short_clip_is_sampled_as_upstream_and_counted(tmp_path, tiny_pllava):
    root = str(tmp_path / "D")
    fixtures.make_mvbench(root)
    # a 3-frame clip for a 4-frame run: upstream's get_index repeats indices
    fixtures.write_video(os.path.join(root, "MVBench/video/ssv2_video/166583.webm"), n=3)
    path = os.path.join(root, "MVBench/video/ssv2_video/166583.webm")
    with pytest.warns(video.ShortClipWarning):
        clip = video.load_video(path, 4)
    assert clip.shape[0] == 4
    total = video.video_info(path)[0]
    # get_index with no bound: start 0, end = max_frame = total - 1, seg = (end - start) / 4
    seg = (total - 1) / 4
    want = [int(seg / 2 + round(seg * i)) for i in range(4)]
    assert video.segment_midpoint_indices(4, total - 1, 4.0) == want and len(set(want)) < 4
    out = tmp_path / "run"
    res = runner.evaluate(benchmark="mvbench", model="tiny-pllava", data_root=root, output_dir=str(out),
                          loaded=tiny_pllava, frames=4, progress=False, params={"stage1": False})
    rows = {r["id"]: r for r in results.RunWriter(str(out)).read_samples()}
    assert rows["action_antonym/0"].get("short_clip") and not rows["action_antonym/0"]["error"]
    assert res["counts"]["short_clips"] == sum(1 for r in rows.values() if r.get("short_clip")) >= 1
    res2 = runner.evaluate(benchmark="mvbench", model="tiny-pllava", data_root=root, output_dir=str(tmp_path / "e"),
                           loaded=tiny_pllava, frames=4, progress=False, params={"stage1": False},
                           protocol_options={"short_clips": "error"})
    rows2 = {r["id"]: r for r in results.RunWriter(str(tmp_path / "e")).read_samples()}
    assert "fewer than the 4" in rows2["action_antonym/0"]["error"] and res2["counts"]["short_clips"] == 0
