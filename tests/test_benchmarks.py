"""Benchmark definitions: frozen prompts (snapshots), official parsing and check_ans, lmms-eval extraction,
item listing from the official layouts, frame sampling."""
import json
import os

import pytest
import torch

import fixtures
from prunevid import benchmarks
from prunevid.benchmarks import Item, check_ans, lmms_extract_letter
from prunevid.benchmarks.base import official_mc_score, official_pred, lmms_mc_score, mc_metrics
from prunevid.models.tiny import build_byte_tokenizer
from prunevid.video import build_prompt

SNAPSHOT = os.path.join(os.path.dirname(__file__), "snapshots", "prompts.json")
BENCHES = ("mvbench", "videomme", "egoschema", "vcgbench")
PROTOCOLS = ("official", "lmms-eval")

MC_ITEM = Item(id="x", category="c", video="v.mp4", question="What happened after the person took the food?",
               candidates=["Ate the medicine.", "Tidied up the blanket.", "Put down the cup."],
               answer="Tidied up the blanket.")
VCG_ITEM = Item(id="consistency/0", category="consistency", video="v.mp4", question="What colour is the square?",
                answer="White.", extra={"question2": "Which colour does it have?"})


def render_all():
    tok = build_byte_tokenizer()   # renders the LLaVA-OneVision chat template
    out = {}
    for b in BENCHES:
        bench = benchmarks.get(b)
        for proto in PROTOCOLS:
            item = VCG_ITEM if b == "vcgbench" else MC_ITEM
            out[f"{b}/{proto}"] = {
                "prompts": [build_prompt(tok, p.text, system=p.system, answer_prefix=p.answer_prefix)
                            for p in bench.prompts(item, proto)],
                "gen_kwargs": bench.gen_kwargs(proto), "frames": bench.default_frames(proto)}
    return out


def test_prompt_snapshots():
    """Any change of a prompt string fails here; regenerate on purpose with PRUNEVID_UPDATE_SNAPSHOTS=1."""
    got = render_all()
    if os.environ.get("PRUNEVID_UPDATE_SNAPSHOTS"):
        with open(SNAPSHOT, "w") as f:
            json.dump(got, f, indent=1, ensure_ascii=False)
            f.write("\n")
    with open(SNAPSHOT) as f:
        want = json.load(f)
    assert got == want


def test_official_mvbench_prompt_exact():
    p = render_all()["mvbench/official"]["prompts"][0]
    assert p == (
        "<|im_start|>system\nCarefully watch the video and pay attention to the cause and sequence of events, the "
        "detail and movement of objects, and the action and pose of persons. Based on your observations, select the "
        "best option that accurately addresses the question.\n<|im_end|>\n<|im_start|>user\n<video>\n"
        "Question: What happened after the person took the food?\nOptions:\n(A) Ate the medicine.\n"
        "(B) Tidied up the blanket.\n(C) Put down the cup. \nOnly give the best option.<|im_end|>\n"
        "<|im_start|>assistant\nBest option:(")


def test_lmms_prompts_exact():
    r = render_all()
    assert "<video>\nQuestion:What happened after the person took the food?\nOption:\n(A) Ate the medicine.\n" \
           "(B) Tidied up the blanket.\n(C) Put down the cup.\nOnly give the best option.\n<|im_end|>" \
           in r["mvbench/lmms-eval"]["prompts"][0]
    assert "C. Put down the cup.\n\nAnswer with the option's letter from the given choices directly.<|im_end|>" \
           in r["videomme/lmms-eval"]["prompts"][0]
    assert r["mvbench/lmms-eval"]["prompts"][0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert r["mvbench/lmms-eval"]["gen_kwargs"]["max_new_tokens"] == 16
    assert r["mvbench/official"]["gen_kwargs"]["max_new_tokens"] == 100
    assert r["mvbench/official"]["frames"] == 16 and r["mvbench/lmms-eval"]["frames"] == 32


def test_vcg_system_prompt_keeps_missing_space():
    p = render_all()["vcgbench/official"]["prompts"]
    assert len(p) == 2  # consistency: Q1 then Q2
    assert "natural language.Follow the instructions" in p[0]
    assert p[1].endswith("<video>\nWhich colour does it have?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("pred,gt,ok", [
    ("(B) Tidied up the blanket.", "(B) Tidied up the blanket.", True),
    ("(B", "(B) x", True),
    ("(b)", "(B) x", True),
    ("(B.", "(B) x", True),            # '.' removed before the substring test
    ("(A) Tidied", "(B) Tidied", False),
    ("(", "(B) x", False),             # no letter a-g in the first token
    ("( B)", "(B) x", False),
    ("(Bb)", "(B) x", False),
    ("(B)extra", "(B) x", True),       # gt token inside the pred token
])
def test_check_ans(pred, gt, ok):
    assert check_ans(pred, gt) is ok


def test_official_parse_and_unparsed():
    assert official_pred("B) Tidied up the blanket.") == ("(B) Tidied up the blanket.", "B) Tidied up the blanket.")
    s = official_mc_score(MC_ITEM, "B) Tidied up the blanket.")
    assert (s.parsed, s.correct, s.unparsed) == ("B", True, False)
    s = official_mc_score(MC_ITEM, "A) Ate the medicine.")
    assert (s.parsed, s.correct, s.unparsed) == ("A", False, False)
    for bad in (" B)", "The answer is B", "", "D) not an option"):   # D: not a letter of a 3-option item
        s = official_mc_score(MC_ITEM, bad)
        assert s.unparsed and s.correct is False and s.parsed is None
    # a repeated prefix: upstream joins every piece after the first prefix ("xx B)": unparsed); the kit's named
    # fix answer_parse="last_prefix" reads the text after the last one, and says it was the fix that parsed it
    s = official_mc_score(MC_ITEM, "xx Best option:(B)")
    assert (s.parsed, s.unparsed, s.fallback) == (None, True, False)
    s = official_mc_score(MC_ITEM, "xx Best option:(B)", rule="last_prefix")
    assert (s.parsed, s.correct, s.fallback) == ("B", True, True)


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("(C) Put down the cup.", "C"), ("The answer is A.", "A"), ("Best option: B", "B"),
    ("I think it is C", "C"), ("nothing useful here", None), ("D", None),
])
def test_lmms_extract(text, letter):
    assert lmms_extract_letter(text, "ABC") == letter


def test_lmms_score_unparsed_counts_wrong():
    s = lmms_mc_score(MC_ITEM, "no idea")
    assert s.unparsed and s.correct is False
    assert lmms_mc_score(MC_ITEM, "B").correct is True


def test_mc_metrics_categories():
    rows = [{"id": "1", "category": "short", "answer": "A", "correct": True, "domain": "Knowledge"},
            {"id": "2", "category": "short", "answer": "B", "correct": False, "domain": "Sports", "error": "x"},
            {"id": "3", "category": "long", "answer": "C", "correct": True, "domain": "Knowledge"},
            {"id": "4", "category": "long", "answer": None, "correct": None}]       # no public answer: not scored
    m = mc_metrics(rows, ("domain",))
    assert m["accuracy"] == pytest.approx(200 / 3) and m["accuracy_valid"] == 100.0
    assert m["by_category"] == {"short": 50.0, "long": 100.0, "domain/Knowledge": 100.0, "domain/Sports": 0.0}


def test_unknown_benchmark_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmarks.get("nope")
    for b in BENCHES:
        with pytest.raises(benchmarks.DataMissing, match=f"python -m prunevid data {b}"):
            benchmarks.get(b).items(str(tmp_path))


def test_synthetic_is_generated_on_first_use_and_listed_round_robin(tmp_path):
    from prunevid import synthetic
    bench = benchmarks.get("synthetic")
    items = bench.items(str(tmp_path), limit=2 * len(synthetic.TASKS))
    assert os.path.isfile(tmp_path / "Synthetic" / "meta.json")
    assert [it.category for it in items] == list(synthetic.TASKS) * 2          # a limit covers every task
    assert all(os.path.isfile(it.video) and it.answer in it.candidates for it in items)
    meta_mtime = os.path.getmtime(tmp_path / "Synthetic" / "meta.json")
    bench.items(str(tmp_path))                                                  # second use: not regenerated
    assert os.path.getmtime(tmp_path / "Synthetic" / "meta.json") == meta_mtime
    prompt = bench.prompt(items[0], "official")
    assert prompt.text.startswith("Question: ") and prompt.answer_prefix == "Best option:("


@pytest.fixture(scope="module")
def datas(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datas"))
    for make in fixtures.MAKERS.values():
        make(root)
    return root


def test_mvbench_items(datas):
    items = {it.id: it for it in benchmarks.get("mvbench").items(datas)}
    assert set(items) == {"action_sequence/0", "action_sequence/1", "action_antonym/0", "action_antonym/1",
                          "episodic_reasoning/0"}
    seq = items["action_sequence/0"]
    assert seq.bound == (0.5, 2.5) and seq.category == "Action Sequence"
    assert seq.video.endswith(os.path.join("MVBench", "video", "star/Charades_v1_480/", "AAA01.mp4"))
    assert items["action_antonym/0"].bound is None
    ep = items["episodic_reasoning/0"]
    assert ep.frame_folder and ep.answer_letter == "D"
    assert benchmarks.get("mvbench").items(datas, limit=2)[1].id == "action_sequence/1"


def test_frames_protocols(datas):
    bench = benchmarks.get("mvbench")
    items = {it.id: it for it in bench.items(datas)}
    assert bench.frames(items["action_sequence/0"], 4, "official").shape == (4, 64, 64, 3)
    assert bench.frames(items["action_antonym/0"], 6, "lmms-eval").shape == (6, 64, 64, 3)
    ff = bench.frames(items["episodic_reasoning/0"], 4, "official")
    # fps 3, bound (0, 3.5): start_idx 1, end_idx min(round(10.5)=10, 12) -> seg 2.25 -> 2, 4, 6, 9 (1-based files)
    assert ff.shape == (4, 64, 64, 3)
    assert [int(ff[i, 0, 0, 0]) for i in range(4)] == pytest.approx([(i * 17) % 255 for i in (2, 4, 6, 9)], abs=3)


def test_videomme_egoschema_vcg_items(datas):
    vm = benchmarks.get("videomme").items(datas)
    assert [it.category for it in vm] == ["short", "short", "medium", "long"]
    assert vm[0].id == "001-1" and vm[0].extra["domain"] == "Knowledge" and vm[0].extra["task_type"]
    ego = benchmarks.get("egoschema").items(datas)
    assert len(ego) == 4 and sum(it.answer is not None for it in ego) == 3
    assert ego[0].id == fixtures.EGO_UIDS[0]
    assert len(benchmarks.get("egoschema-subset").items(datas)) == 3
    vcg = benchmarks.get("vcgbench").items(datas)
    assert [it.id for it in vcg] == ["generic/0", "generic/1", "temporal/0", "consistency/0"]
    assert vcg[2].video.endswith("v_def456.mkv")   # mp4 tried first, then mkv


def test_lmms_linspace_respects_bound(datas):
    """Bounded MVBench items under lmms-eval: linspace inside the bound (lmms-eval reads pre-cut segments)."""
    from prunevid import video
    bench = benchmarks.get("mvbench")
    item = {it.id: it for it in bench.items(datas)}["action_sequence/0"]      # 12 frames at 4 fps, bound 0.5-2.5 s
    got = bench.frames(item, 3, "lmms-eval")
    full = video.load_video(item.video, 12, sampling="linspace")             # every frame
    # frames 2..10 -> linspace(2, 10, 3) = 2, 6, 10
    assert torch.equal(got, full[[2, 6, 10]])


def test_official_frames_use_bound(datas):
    """Official sampling: segment midpoints inside the bound (0.5-2.5 s at 4 fps -> frames 2..10 -> 3, 5, 7, 9)."""
    from prunevid import video
    bench = benchmarks.get("mvbench")
    item = {it.id: it for it in bench.items(datas)}["action_sequence/0"]
    full = video.load_video(item.video, 12, sampling="linspace")
    assert torch.equal(bench.frames(item, 4, "official"), full[[3, 5, 7, 9]])
    unbounded = {it.id: it for it in bench.items(datas)}["action_antonym/0"]
    # no bound: max_frame = 11, seg 2.75 -> int(1.375 + round_half_even(2.75 i)) = 1, 4, 7, 9
    full = video.load_video(unbounded.video, 12, sampling="linspace")
    assert torch.equal(bench.frames(unbounded, 4, "official"), full[[1, 4, 7, 9]])
