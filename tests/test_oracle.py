"""The ``oracle`` method (keep the tokens that cover the generator's objects first) and the hints that carry its
ground truth: the pure selection on hand-made coverage, the no-op and patch contract on the tiny model, the
one-line errors, and a run through the runner on the synthetic benchmark with the demo model."""
import json

import pytest
import torch

import prunevid
from prunevid import benchmarks, models, state
from prunevid.harness import runner
from prunevid.methods.oracle import (MISSING_HINT, MISSING_QUESTION_HINT, OracleConfig, OracleMethod, oracle_keep,
                                     pooled_coverage, question_score)
from prunevid.methods.random_keep import RandomKeepMethod

from conftest import FRAMES

P = 49


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ oracle_keep
COVERAGE = torch.tensor([[0.0, 0.5, 0.0, 1.0],
                         [0.25, 0.0, 0.0, 0.5]])


def test_oracle_keep_takes_covered_cells_by_coverage_first():
    # by coverage: (0,3) 1.0, then (0,1) and (1,3) at 0.5 (a seeded order between them), then (1,0) 0.25
    assert oracle_keep(COVERAGE, 1, _gen()).nonzero().tolist() == [[0, 3]]
    three = oracle_keep(COVERAGE, 3, _gen())
    assert three.nonzero().tolist() == [[0, 1], [0, 3], [1, 3]]
    four = oracle_keep(COVERAGE, 4, _gen())
    assert four.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [1, 3]]
    two = oracle_keep(COVERAGE, 2, _gen())                   # one of the two tied at 0.5
    assert two[0, 3] and int(two.sum()) == 2 and bool(two[0, 1]) != bool(two[1, 3])


def test_oracle_keep_background_after_covered_exact_count_and_seeded():
    background = COVERAGE == 0
    for n in range(1, COVERAGE.numel() + 1):
        kept = oracle_keep(COVERAGE, n, _gen(3))
        assert kept.shape == COVERAGE.shape and kept.dtype == torch.bool and int(kept.sum()) == n
        assert int((kept & ~background).sum()) == min(n, 4)          # the 4 covered cells come first
        assert torch.equal(kept, oracle_keep(COVERAGE, n, _gen(3)))  # determinism with a seed
    assert oracle_keep(COVERAGE, 8, _gen()).all()
    # background order is the seeded draw: some seed picks another background cell at n = 5
    picks = {tuple(map(tuple, oracle_keep(COVERAGE, 5, _gen(s)).nonzero().tolist())) for s in range(20)}
    assert len(picks) > 1
    for bad in (0, 9):
        with pytest.raises(ValueError, match="n_keep"):
            oracle_keep(COVERAGE, bad, _gen())


def test_pooled_coverage_is_the_share_of_each_cell():
    masks = torch.zeros(2, 4, 4)
    masks[0, :2, :2] = 1.0                                 # the top-left cell of a 2 x 2 grid, whole
    masks[1, 0, :] = 1.0                                   # the top row of pixels: half of each top cell
    cov = pooled_coverage(masks, (2, 2))
    assert cov.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]


def test_question_score_ranks_question_tokens_then_other_objects_then_background():
    # frame 0: a question object half over cell 1, another object whole on cell 3; frame 1: the question object
    # a quarter over cell 0 (where another object covers half), background elsewhere
    question = torch.tensor([[0.0, 0.5, 0.0, 0.0],
                             [0.25, 0.0, 0.0, 0.0]])
    objects = torch.tensor([[0.0, 0.5, 0.0, 1.0],
                            [0.75, 0.0, 0.0, 0.0]])
    score = question_score(question, objects)
    assert score.tolist() == [[0.0, 2.5, 0.0, 1.0], [2.25, 0.0, 0.0, 0.0]]
    # the whole other object (cell 3) waits behind both partial question tokens, unlike the object-first rule
    assert oracle_keep(score, 2, _gen()).nonzero().tolist() == [[0, 1], [1, 0]]
    assert oracle_keep(objects, 2, _gen()).nonzero().tolist() == [[0, 3], [1, 0]]
    assert oracle_keep(score, 3, _gen()).nonzero().tolist() == [[0, 1], [0, 3], [1, 0]]
    # a question about the scene (the background's pixels): pure background first, object cells last
    scene = 1.0 - objects
    kept = oracle_keep(question_score(scene, objects), 5, _gen())
    assert not kept[0, 3] and int(kept.sum()) == 5
    assert kept[0, 0] and kept[0, 2] and kept[1, 1] and kept[1, 2] and kept[1, 3]
    with pytest.raises(ValueError, match="both be"):
        question_score(question, objects[:1])


def test_config_validation():
    with pytest.raises(ValueError, match="retain"):
        OracleConfig(retain=0.0)
    with pytest.raises(ValueError, match="positions"):
        OracleConfig(positions="sideways")
    with pytest.raises(ValueError, match="focus"):
        OracleConfig(focus="answer")
    assert OracleMethod(OracleConfig()).needs_hints == ("object_masks",)
    assert OracleMethod(OracleConfig(focus="question")).needs_hints == ("object_masks", "question_masks")
    assert not OracleMethod(OracleConfig(retain=1.0)).enabled


# ------------------------------------------------------------------------------------------- the tiny model
def _masks(frames=FRAMES):
    m = torch.zeros(frames, 112, 112)
    for t in range(frames):
        m[t, 32:64, 8 * t:8 * t + 32] = 1.0                # a moving square
    return m


def test_noop_is_bit_identical_and_needs_no_hint(tiny, tiny_inputs, tiny_ref):
    model, _ = tiny
    prunevid.apply(model, method="oracle", retain=1.0)
    try:
        with torch.no_grad():
            logits = model(**tiny_inputs).logits
    finally:
        prunevid.remove(model)
    assert torch.equal(logits, tiny_ref)


def test_missing_hint_is_one_line_and_hints_travel_with_the_patch(tiny, tiny_inputs, tiny_ref):
    model, _ = tiny
    prunevid.apply(model, method="oracle")
    try:
        with pytest.raises(ValueError) as e, torch.no_grad():
            model(**tiny_inputs)
        assert str(e.value) == MISSING_HINT and "\n" not in str(e.value)
        assert "set_hints" in str(e.value) and "synthetic" in str(e.value)
        state.set_hints(model, object_masks=_masks(FRAMES - 1))
        with pytest.raises(ValueError, match=f"has {FRAMES - 1} frames but the video has {FRAMES}"), torch.no_grad():
            model(**tiny_inputs)
        state.set_hints(model, object_masks=_masks())
        assert set(state.hints(model)) == {"object_masks"}
        with torch.no_grad():
            logits = model(**tiny_inputs).logits[:, -1]
            out = model.generate(**tiny_inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        st, info = prunevid.stats(model), prunevid.info(model)
        kept = prunevid.methods.kept_map(model)
        cover = pooled_coverage(_masks(), (7, 7)) > 0
    finally:
        prunevid.remove(model)
    n = FRAMES * P
    assert st["visual_tokens_stage2"] == int(kept.sum()) == int(0.25 * n)
    assert info["covered_tokens"] == int(cover.sum())
    assert info["kept_covered"] == int((kept & cover).sum()) == min(int(cover.sum()), int(0.25 * n))
    assert out.sequences.shape[1] == tiny_inputs["input_ids"].shape[1] + 3
    torch.testing.assert_close(out.scores[0], logits, rtol=1e-4, atol=1e-4)
    assert state.hints(model) == {}                                   # remove drops them with the patch
    assert not prunevid.is_patched(model)
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs).logits, tiny_ref)     # remove restores


def test_question_focus_reads_its_hint_and_keeps_question_tokens_first(tiny, tiny_inputs):
    model, _ = tiny
    question = torch.zeros(FRAMES, 112, 112)
    question[:, 32:48, 8:24] = 1.0                                   # one cell per frame (the question's object)
    prunevid.apply(model, method="oracle", focus="question", retain=0.05)
    try:
        state.set_hints(model, object_masks=_masks())
        with pytest.raises(ValueError) as e, torch.no_grad():
            model(**tiny_inputs)
        assert str(e.value) == MISSING_QUESTION_HINT and "\n" not in str(e.value)
        state.set_hints(model, object_masks=_masks(), question_masks=question[:-1])
        with pytest.raises(ValueError, match="give both for the same frames"), torch.no_grad():
            model(**tiny_inputs)
        state.set_hints(model, object_masks=_masks(), question_masks=question)
        with torch.no_grad():
            model(**tiny_inputs)
        kept = prunevid.methods.kept_map(model)
    finally:
        prunevid.remove(model)
    q_cells = pooled_coverage(question, (7, 7)) > 0
    objects = pooled_coverage(_masks(), (7, 7)) > 0
    n = int(kept.sum())
    assert n == max(1, int(0.05 * FRAMES * P)) and int(q_cells.sum()) <= n
    assert bool(kept[q_cells].all())                                # every question token, then
    assert int((kept & ~q_cells & objects).sum()) == min(n - int(q_cells.sum()), int((objects & ~q_cells).sum()))


def test_clear_hints(tiny):
    model, _ = tiny
    prunevid.apply(model, method="oracle")
    try:
        state.set_hints(model, object_masks=_masks())
        state.clear_hints(model)
        assert state.hints(model) == {}
    finally:
        prunevid.remove(model)
    with pytest.raises(ValueError, match="not patched"):
        state.set_hints(model, object_masks=_masks())


def test_runner_refuses_a_benchmark_without_the_hint(tmp_path):
    """Before any file: the oracle needs object masks, which only the synthetic benchmarks give."""
    bench = benchmarks.get("videomme")
    assert bench.provides_hints == () and bench.hints(None, 8, "official") == {}
    loaded = models.load("tiny")
    prunevid.apply(loaded.model, method="oracle")
    try:
        with pytest.raises(ValueError, match="needs the hint object_masks, which the videomme benchmark cannot"):
            runner.check_hints_available(bench, loaded.model, "oracle")
        runner.check_hints_available(benchmarks.get("synthetic"), loaded.model, "oracle")
        prunevid.apply(loaded.model, method="oracle", retain=1.0)          # a no-op reads nothing
        runner.check_hints_available(bench, loaded.model, "oracle")
        # focus="question" needs what only versions 2 and 3 record (which objects each question is about)
        prunevid.apply(loaded.model, method="oracle", focus="question")
        with pytest.raises(ValueError, match="needs the hint question_masks, which the synthetic benchmark"):
            runner.check_hints_available(benchmarks.get("synthetic"), loaded.model, "oracle")
        for name in ("synthetic-v2", "synthetic-v2-val", "synthetic-v3", "synthetic-v3-val"):
            runner.check_hints_available(benchmarks.get(name), loaded.model, "oracle")
    finally:
        prunevid.remove(loaded.model)


# ------------------------------------------------------------------------- the synthetic benchmark, the demo model
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from prunevid import synthetic as S
    root = str(tmp_path_factory.mktemp("synthetic"))
    S.ensure_split(root, "test", log=lambda m: None)
    return root


def test_synthetic_hints_are_the_generators_objects(synthetic_root):
    """The masks are the regenerated items' object pixels at the sampled frames: where a mask is set, the file's
    frame differs from the item's background texture (up to noise and compression)."""
    from prunevid import synthetic as S
    bench = benchmarks.get("synthetic")
    items = bench.items(synthetic_root, 7)
    for item in items:
        for protocol in ("official", "lmms-eval"):
            masks = bench.hints(item, 16, protocol)["object_masks"]
            assert masks.shape == (16, S.FRAME_SIZE, S.FRAME_SIZE) and masks.dtype == torch.float32
            assert set(masks.unique().tolist()) <= {0.0, 1.0} and masks.sum() > 0
        task, index = item.id.split("/")
        sample = S.make_item(task, S.item_rng(S.SPLIT_SEEDS["test"], task, int(index)))
        frames = torch.from_numpy(sample.frames).float()
        bg = torch.stack([torch.from_numpy(sample.video.backgrounds[s]) for s in sample.video.scenes])
        differs = (frames - bg).abs().amax(-1) > 12
        on = masks.bool()
        assert differs[on].float().mean() > 0.9 and differs[~on].float().mean() < 0.02, item.id
    assert bench.hints(items[0], 4, "official")["object_masks"].shape[0] == 4


def test_v2_question_masks_follow_the_task_never_the_answer(tmp_path):
    """synthetic-v2's question_masks: the named object (or the mover) alone where the question names one; every
    object for counting, order and existence (yes and no items alike: the kept set must not tell the answer); the
    scene (every pixel no object covers) for a scene transition. Version 1 gives object masks only."""
    from prunevid import synthetic as S
    root = str(tmp_path)
    S.write_split(root, "test", n_per_task=4, version=2)
    bench = benchmarks.get("synthetic-v2")
    assert "question_masks" not in benchmarks.get("synthetic").provides_hints
    answers = set()
    for item in bench.items(root, None):
        task, index = item.id.split("/")
        hints = bench.hints(item, 16, "official")
        objects, question = hints["object_masks"].bool(), hints["question_masks"].bool()
        assert question.shape == objects.shape == (16, S.FRAME_SIZE, S.FRAME_SIZE)
        video = S.make_item(task, S.item_rng(S.SPLIT_SEEDS_V2["test"], task, int(index)), version=2).video
        if task == "scene_transition":
            assert torch.equal(question, ~objects)
        elif task in ("moving_direction", "moving_attribute", "state_change"):
            first = torch.stack([torch.from_numpy(S.object_pixels(video.tracks[0], t)) for t in range(16)])
            assert torch.equal(question, first) and bool((question <= objects).all())
            assert bool((objects & ~question).any())                   # the other objects are left out
        else:
            assert torch.equal(question, objects)
        if task == "object_existence":
            answers.add(item.answer)
    assert answers == {"yes", "no"}


def test_question_focus_through_the_runner_on_version_2(tmp_path, monkeypatch):
    """oracle focus=question on synthetic-v2-val through the runner (the demo model, one item per task): the run
    records the setting, and each item's kept set ranks the question's tokens first (every one kept where the
    budget allows; a scene transition keeps no token that objects cover whole while background remains)."""
    from prunevid import synthetic as S
    from prunevid.benchmarks.synthetic import SyntheticV2Val
    root = str(tmp_path / "data")
    S.write_split(root, "val", n_per_task=1, version=2)
    monkeypatch.setattr(SyntheticV2Val, "check_data", lambda self, data_root: None)   # the small split as is
    kept = []
    original = OracleMethod.reduce

    def reduce(self, video):
        red = original(self, video)
        kept.append(red.kept.cpu())
        return red
    monkeypatch.setattr(OracleMethod, "reduce", reduce)
    res = runner.evaluate(benchmark="synthetic-v2-val", model="demo", method="oracle", data_root=root,
                          output_dir=str(tmp_path / "run"), limit=7, params={"retain": 0.25, "focus": "question"},
                          progress=False)
    assert res["n_samples"]["done"] == 7 and res["method"]["focus"] == "question"
    bench = benchmarks.get("synthetic-v2-val")
    for item, k in zip(bench.items(root, 7), kept):
        hints = bench.hints(item, k.shape[0], "official")
        side = int(round(k.shape[1] ** 0.5))
        question = pooled_coverage(hints["question_masks"], (side, side)) > 0
        objects = pooled_coverage(hints["object_masks"], (side, side))
        n = int(k.sum())
        assert int((k & question).sum()) == min(n, int(question.sum())), item.id
        if item.category == "scene_transition":
            assert int((k & (objects >= 1)).sum()) == max(0, n - int((objects < 1).sum())), item.id


def test_oracle_through_the_runner_keeps_more_object_tokens_than_random(synthetic_root, tmp_path, monkeypatch):
    """On the demo model: the run works, and on every item the oracle's kept tokens cover objects more often than
    random keep's at the same retain (a property, not a snapshot)."""
    kept = {"oracle": [], "random": []}

    def spy(cls, name):
        original = cls.reduce

        def reduce(self, video):
            red = original(self, video)
            kept[name].append(red.kept.cpu())
            return red
        monkeypatch.setattr(cls, "reduce", reduce)

    spy(OracleMethod, "oracle")
    spy(RandomKeepMethod, "random")
    loaded = models.load("demo")
    limit = 7                                          # one item of every task
    for method in ("oracle", "random"):
        res = runner.evaluate(benchmark="synthetic", model="demo", loaded=loaded, method=method,
                              data_root=synthetic_root, output_dir=str(tmp_path / method), limit=limit,
                              params={"retain": 0.25}, progress=False)
        assert res["n_samples"]["done"] == limit and res["method"]["name"] == method
        with open(tmp_path / method / "samples.jsonl") as f:
            assert not any(json.loads(line)["error"] for line in f)
        assert state.hints(loaded.model) == {} and not prunevid.is_patched(loaded.model)
    bench = benchmarks.get("synthetic")
    items = bench.items(synthetic_root, limit)
    assert len(kept["oracle"]) == len(kept["random"]) == limit
    for item, k_or, k_rd in zip(items, kept["oracle"], kept["random"]):
        side = int(round(k_or.shape[1] ** 0.5))                           # a square grid (7 x 7 on the demo model)
        cover = pooled_coverage(bench.hints(item, k_or.shape[0], "official")["object_masks"], (side, side)) > 0
        assert int(k_or.sum()) == int(k_rd.sum())
        assert int((k_or & cover).sum()) > int((k_rd & cover).sum()), item.id
        assert int((k_or & cover).sum()) == min(int(cover.sum()), int(k_or.sum())), item.id


def test_reports_draw_the_oracle_as_a_labelled_reference():
    from prunevid.harness import report
    assert report.method_colour("oracle") == report.METHOD_COLOURS["oracle"]
    assert report.METHOD_COLOURS["oracle"] not in {c for m, c in report.METHOD_COLOURS.items() if m != "oracle"}
    assert "ceiling" in report._method_cell("oracle") and report._method_cell("random") == "random"
    row = {"status": "done", "score": 60.0, "retained": 0.25, "benchmark": "synthetic", "model": "demo",
           "method": "oracle", "series": "oracle", "run_id": "r"}
    (panel,) = report.plot_panels([row], "retained")
    assert panel["series"][0]["label"] == "oracle (ceiling)"
    assert panel["series"][0]["colour"] == report.METHOD_COLOURS["oracle"]
