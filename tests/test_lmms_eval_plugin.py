"""The lmms-eval plugin (``prunevid/integrations/lmms_eval``) against the released lmms-eval 0.7.3, offline.

- lmms-eval finds the three plugin models through the entry-point group ``lmms_eval.models``;
- the synthetic task folder is the kit's synthetic test split under ``--protocol lmms-eval`` (docs, prompt, checksum,
  generation settings);
- the demo model on that task, unpruned through ``lmms_eval.evaluator.simple_evaluate`` and with PruneVid through
  the ``lmms-eval`` command, each in its own process: every item's reply is the kit runner's prediction (stripped, as
  lmms-eval's ``llava_onevision`` returns it), every statistics row beside lmms-eval's files equals the runner's
  sample row, and the accuracy is the runner's;
- on MVBench and Video-MME fixture items (upstream-shaped rows, converted by the kit's data scripts for the runner,
  read as they are by lmms-eval's own task utilities): the frame indices, the rendered question and the generation
  settings the plugin uses are those of lmms-eval's ``doc_to_visual`` / ``doc_to_text`` / task YAML, and equal the
  kit's ``--protocol lmms-eval``; on the three architectures (tiny models) the plugin answers as the runner does;
- ``--model_args``: unknown keys, a batch size above 1, a wrong architecture are clear errors.

lmms-eval is installed by ``scripts/install_lmms_eval.sh`` (``make test`` runs it and sets
``PRUNEVID_REQUIRE_LMMS_EVAL=1``, so a missing lmms-eval fails these tests there instead of skipping them).
"""
import inspect
import json
import os
import subprocess
import sys

import pytest

import fixtures

REQUIRED = os.environ.get("PRUNEVID_REQUIRE_LMMS_EVAL") == "1"
try:
    import lmms_eval  # noqa: F401  (an empty package __init__: cheap)
    HAVE_LMMS_EVAL = True
except ImportError:
    HAVE_LMMS_EVAL = False
INSTALL_HINT = "lmms-eval is not installed in this environment: run scripts/install_lmms_eval.sh (make lmms-eval)"
LIMIT = 7                           # one item of each of the synthetic benchmark's 7 tasks (the runner's order)
MODEL = "prunevid_llava_onevision"


@pytest.fixture(autouse=True)
def lmms_eval_installed():
    if not HAVE_LMMS_EVAL:
        if REQUIRED:
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """HF caches in a temporary folder and no hub: what these tests and their subprocesses run under."""
    hf = str(tmp_path_factory.mktemp("hf_home"))
    env = {"HF_HOME": hf, "HF_DATASETS_CACHE": os.path.join(hf, "datasets"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory, offline):
    """A freshly generated synthetic test split, the data root of the runner and of the plugin's task."""
    from prunevid import synthetic as S
    root = str(tmp_path_factory.mktemp("synthetic"))
    S.ensure_split(root, "test", log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEVID_DATA", root)
        yield root


@pytest.fixture(scope="module")
def demo():
    from prunevid import models
    return models.load("demo")


# ------------------------------------------------------------------------------------------------- registration
def test_install_kept_the_kits_torch_and_no_torchvision():
    from importlib.metadata import PackageNotFoundError, version
    assert version("lmms-eval") == "0.7.3"
    with pytest.raises(PackageNotFoundError):
        version("torchvision")
    import torch
    assert torch.__version__ == version("torch")        # the torch in use is the one installed, not a second copy


def test_lmms_eval_finds_the_three_plugin_models():
    from lmms_eval import models as lmms_models
    from lmms_eval.api.model import lmms
    from prunevid.integrations.lmms_eval import MODEL_ARCHITECTURES
    from prunevid.integrations.lmms_eval import models as plugin
    names = lmms_models.list_available_models()
    missing = [n for n in MODEL_ARCHITECTURES if n not in names]
    assert not missing, (f"{missing} not registered: the entry points of pyproject.toml take effect when the kit is "
                         f"reinstalled (scripts/setup_venv.sh)")
    for name, arch in MODEL_ARCHITECTURES.items():
        cls = lmms_models.get_model(name)
        assert issubclass(cls, lmms) and cls.is_simple and cls.NAME == name and cls.ARCH == arch
        assert cls.__module__ == plugin.__name__


# ------------------------------------------------------------------------------------------------ the synthetic task
def test_synthetic_task_is_the_kits_split_under_the_lmms_eval_protocol(synthetic_root):
    from lmms_eval.utils import load_yaml_config
    from prunevid import benchmarks
    from prunevid.integrations.lmms_eval import models as plugin
    from prunevid.integrations.lmms_eval import synthetic_task as T
    with open(T.DOCS_FILE) as f:
        shipped = [json.loads(line) for line in f]
    assert shipped == T.docs(synthetic_root), "shipped docs differ from the generated split's items (runner's order)"
    cfg = load_yaml_config(T.YAML_FILE, mode="full")          # lmms-eval's own loader, !function hooks resolved
    kwargs = cfg["lmms_eval_specific_kwargs"]["default"]
    assert kwargs["split_checksum"] == T.split_checksum(synthetic_root)
    assert cfg["dataset_kwargs"]["data_files"]["test"] == T.DOCS_FILE      # resolved next to the YAML
    bench = benchmarks.get("synthetic")
    assert plugin.greedy_settings(cfg["generation_kwargs"]) == bench.gen_kwargs("lmms-eval")
    items = bench.items(synthetic_root)
    for doc, item in zip(shipped, items):
        prompt = bench.prompt(item, "lmms-eval")
        assert cfg["doc_to_text"](doc, kwargs) == prompt.text and prompt.system == plugin.LMMS_SYSTEM
        assert cfg["doc_to_visual"](doc, kwargs) == [item.video]
        assert os.path.isfile(item.video)
    # scoring is the kit's: the right letter scores, a caption does not
    doc, item = shipped[0], items[0]
    right = cfg["process_results"](doc, [f"({item.answer_letter}) {item.answer}"])["prunevid_synthetic_accuracy"]
    wrong = cfg["process_results"](doc, ["The scene is green."])["prunevid_synthetic_accuracy"]
    assert right["correct"] and not wrong["correct"] and wrong["parsed"] is None
    assert cfg["metric_list"][0]["aggregation"]([right, wrong]) == 50.0


def test_synthetic_task_refuses_a_split_that_differs_from_its_docs(synthetic_root):
    from prunevid.integrations.lmms_eval import synthetic_task as T
    with open(T.DOCS_FILE) as f:
        doc = json.loads(f.readline())
    with pytest.raises(ValueError, match="rewrite them"):
        T.doc_to_visual(doc, {"split_checksum": "0" * 64})


# --------------------------------------------------------------------------------- the demo model, against the runner
def _runner(demo, root, method, out, params=None):
    """The kit's runner on the first LIMIT items under ``--protocol lmms-eval``: (results, rows by item id)."""
    from prunevid.harness import runner
    res = runner.evaluate(benchmark="synthetic", model="demo", loaded=demo, method=method, protocol="lmms-eval",
                          limit=LIMIT, data_root=root, output_dir=out, progress=False, params=params)
    with open(os.path.join(out, "samples.jsonl")) as f:
        return res, {r["id"]: r for r in map(json.loads, f)}


def _run(cmd, env, timeout=300):
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


SIMPLE_EVALUATE = """
import json, sys
from lmms_eval import evaluator
from lmms_eval.loggers import EvaluationTracker
from lmms_eval.tasks import TaskManager
from prunevid.integrations.lmms_eval import TASKS_DIR
out, model_args, limit, date = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tracker = EvaluationTracker(output_path=out)
res = evaluator.simple_evaluate(model="prunevid_llava_onevision", model_args=model_args, tasks=["prunevid_synthetic"],
                                limit=limit, device="cpu", evaluation_tracker=tracker, log_samples=True,
                                task_manager=TaskManager("WARNING", include_path=TASKS_DIR, include_defaults=False),
                                datetime_str=date, verbosity="WARNING")
samples = res.pop("samples")
tracker.save_results_aggregated(results=res, samples=samples, datetime_str=date)     # as lmms-eval's CLI does
tracker.save_results_samples(task_name="prunevid_synthetic", samples=samples["prunevid_synthetic"])
"""


def _lmms_files(folder):
    """lmms-eval's results and sample log, and the plugin's statistics and summary, of the one run in ``folder``."""
    sub = os.path.join(folder, "demo")                      # <output_path>/<sanitized pretrained>
    names = sorted(os.listdir(sub))
    results = [n for n in names if n.endswith("_results.json") and "_prunevid_" not in n]
    assert len(results) == 1, names
    date = results[0][:-len("_results.json")]
    paths = {"results": results[0], "samples": f"{date}_samples_prunevid_synthetic.jsonl",
             "stats": f"{date}_prunevid_samples_prunevid_synthetic.jsonl", "summary": f"{date}_prunevid_results.json"}
    missing = [p for p in paths.values() if p not in names]
    assert not missing, f"not beside lmms-eval's files in {sub}: {missing} ({names})"
    out = {}
    for key, name in paths.items():
        with open(os.path.join(sub, name)) as f:
            out[key] = [json.loads(line) for line in f] if name.endswith(".jsonl") else json.load(f)
    return out


# sample-row keys the runner and the plugin must both record and agree on; any other key both record is compared too,
# except timings (measurements) and what only the runner's scoring knows (the plugin leaves scoring to the task)
SHARED_KEYS = ("prediction", "prompt", "error", "visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2",
               "kv_visual_tokens", "text_tokens", "segments", "static_tokens", "dynamic_tokens",
               "retained_ratio_stage1", "retained_ratio", "layer_tokens", "layer_kv_tokens", "flops_prefill",
               "flops_ratio", "new_tokens")
NOT_COMPARED = ("id", "category", "parsed", "answer", "correct", "unparsed",
                "prefill_ms", "decode_ms_per_token", "time_s")


def _same_row(row, ref, where):
    missing = [k for k in SHARED_KEYS if k not in row or k not in ref]
    assert not missing, f"{where}: {missing} not recorded"
    for key in sorted((set(row) & set(ref)) - set(NOT_COMPARED)):
        assert row[key] == ref[key], f"{where}: {key} {row[key]!r} vs the runner's {ref[key]!r}"


def _check_against_runner(files, runner_res, runner_rows, method):
    from prunevid.integrations.lmms_eval import synthetic_task as T
    with open(T.DOCS_FILE) as f:
        docs = [json.loads(line) for line in f]
    lm_samples = {s["doc_id"]: s for s in files["samples"]}
    stats = {r["doc_id"]: r for r in files["stats"]}
    assert sorted(lm_samples) == sorted(stats) == list(range(LIMIT))
    assert [docs[i]["id"] for i in range(LIMIT)] == list(runner_rows)     # the same items, in the same order
    for doc_id in range(LIMIT):
        kit_id = docs[doc_id]["id"]
        ref, row, lm = runner_rows[kit_id], stats[doc_id], lm_samples[doc_id]
        assert lm["filtered_resps"] == ref["prediction"].strip(), kit_id
        score = lm["prunevid_synthetic_accuracy"]
        assert score["id"] == kit_id and score["correct"] == ref["correct"] and score["parsed"] == ref["parsed"]
        _same_row(row, ref, kit_id)
        assert (row["task"], row["id"]) == ("prunevid_synthetic", f"prunevid_synthetic/{doc_id}")
    acc = files["results"]["results"]["prunevid_synthetic"]["prunevid_synthetic_accuracy,none"]
    assert acc == pytest.approx(runner_res["metrics"]["accuracy"])
    summary = files["summary"]
    assert summary["method"] == runner_res["method"] and summary["max_frames_num"] == runner_res["config"]["frames"]
    task = summary["tasks"]["prunevid_synthetic"]
    assert task["n_samples"] == {"done": LIMIT, "errors": 0}
    for key, value in runner_res["tokens"].items():
        assert task["tokens"][key] == pytest.approx(value), key
    assert task["flops"]["ratio_vs_unpruned"] == pytest.approx(runner_res["flops"]["ratio_vs_unpruned"])
    if method == "none":
        assert all(stats[i]["retained_ratio"] == 1.0 for i in stats)
    else:                                                   # the method really pruned: not a vacuous comparison
        assert all(stats[i]["retained_ratio"] < 1.0 for i in stats)


def test_simple_evaluate_unpruned_equals_the_runner(demo, synthetic_root, offline, tmp_path):
    """``lmms_eval.evaluator.simple_evaluate`` (in a process of its own: it patches filelock and ssl globally)."""
    runner_res, runner_rows = _runner(demo, synthetic_root, "none", str(tmp_path / "runner"))
    out = str(tmp_path / "lmms")
    _run([sys.executable, "-c", SIMPLE_EVALUATE, out, "pretrained=demo,method=none,max_frames_num=16", str(LIMIT),
          "20261206_120000"], {**offline, "PRUNEVID_DATA": synthetic_root})
    files = _lmms_files(out)
    assert files["summary"]["date_id"] == "20261206_120000"
    _check_against_runner(files, runner_res, runner_rows, "none")
    # the demo model mostly captions under lmms-eval's prompt; at least one of these items names a letter, so the
    # scores compared above are not all "unparsed"
    assert any(r["parsed"] is not None for r in runner_rows.values())


def test_lmms_eval_command_with_prunevid_equals_the_runner(demo, synthetic_root, offline, tmp_path):
    """The ``lmms-eval`` command a user runs (built-in tasks indexed too), with PruneVid at a method setting."""
    from prunevid.integrations.lmms_eval import TASKS_DIR
    runner_res, runner_rows = _runner(demo, synthetic_root, "prunevid", str(tmp_path / "runner"), {"alpha": "0.3"})
    out = str(tmp_path / "lmms")
    exe = os.path.join(os.path.dirname(sys.executable), "lmms-eval")
    _run([exe, "--model", MODEL, "--model_args", "pretrained=demo,method=prunevid,alpha=0.3,max_frames_num=16",
          "--include_path", TASKS_DIR, "--tasks", "prunevid_synthetic", "--limit", str(LIMIT), "--device", "cpu",
          "--output_path", out, "--log_samples", "--verbosity", "WARNING"],
         {**offline, "PRUNEVID_DATA": synthetic_root})
    files = _lmms_files(out)
    assert files["summary"]["method"]["alpha"] == 0.3
    _check_against_runner(files, runner_res, runner_rows, "prunevid")


# ------------------------------------------------------------------------------------------------ model_args
def _make(name, args, batch_size=1):
    from lmms_eval import models as lmms_models
    # what simple_evaluate does with --model_args and the keys it passes every model (--batch_size, --device)
    return lmms_models.get_model(name).create_from_arg_string(args, {"batch_size": batch_size, "max_batch_size": None,
                                                                     "device": "cpu"})


def test_model_args_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model_args key\(s\) \['alpah'\].*'alpha'"):
        _make(MODEL, "pretrained=tiny,method=prunevid,alpah=0.3")
    with pytest.raises(ValueError, match="unknown method 'prunevd'"):
        _make(MODEL, "pretrained=tiny,method=prunevd")
    with pytest.raises(ValueError, match="alpha"):
        _make(MODEL, "pretrained=tiny,method=prunevid,alpha=2")          # out of range: the config's own check
    with pytest.raises(ValueError, match="retain"):
        _make(MODEL, "pretrained=tiny,method=none,retain=0.25")           # `none` has no budget
    with pytest.raises(ValueError, match="batch_size=2"):
        _make(MODEL, "pretrained=tiny,method=none", batch_size="2")       # --batch_size 2
    with pytest.raises(ValueError, match="batch_size=auto"):
        _make(MODEL, "pretrained=tiny,method=none", batch_size="auto")
    with pytest.raises(ValueError, match="needs pretrained"):
        _make(MODEL, "method=none")
    with pytest.raises(ValueError, match="--model prunevid_qwen2_5_vl"):
        _make(MODEL, "pretrained=tiny-qwen2.5-vl")
    with pytest.raises(ValueError, match="--model prunevid_llava_onevision"):
        _make("prunevid_llava_next_video", "pretrained=tiny")
    with pytest.raises(ValueError, match="reads ground truth"):
        _make(MODEL, "pretrained=tiny,method=oracle")


def test_model_args_the_baselines_scripts_pass_are_accepted():
    lm = _make(MODEL, "pretrained=tiny,method=random,retain=0.5,seed=5,conv_template=qwen_1_5,model_name=llava_qwen,"
                      "device_map=auto,max_frames_num=4,dtype=float32,torch_seed=3,max_batch_size=8")
    assert lm.method == "random" and lm.config.retain == 0.5 and lm.config.seed == 5 and lm.max_frames_num == 4
    assert str(lm.device) == "cpu" and lm.batch_size == 1 and lm.torch_seed == 3
    from prunevid import state
    assert state.active_method(lm.loaded.model) is not None


def test_generation_settings_are_greedy_only():
    from prunevid.integrations.lmms_eval.models import greedy_settings
    assert greedy_settings({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                            "until": ["\n\n"]}) == {"max_new_tokens": 16, "do_sample": False, "num_beams": 1}
    assert greedy_settings({})["max_new_tokens"] == 1024           # lmms-eval's llava_onevision default
    with pytest.raises(ValueError, match="do_sample"):
        greedy_settings({"do_sample": True, "temperature": 0.7})
    with pytest.raises(ValueError, match="num_beams"):
        greedy_settings({"num_beams": 4})


# ------------------------------------------------------------------------ protocol parity with lmms-eval's own tasks
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Upstream-shaped MVBench and Video-MME rows in a hub mirror, and the kit's DATAS made from them by its data
    scripts (what the runner reads)."""
    from prunevid.harness import cli
    base = tmp_path_factory.mktemp("parity")
    hub, src, root = str(base / "hub"), str(base / "src"), str(base / "DATAS")
    fixtures.hub_mvbench(hub, src)
    fixtures.hub_videomme(hub, src)
    assert cli.main(["data", "mvbench", "--root", root, "--hub-mirror", hub]) in (0, 1)       # 1: fixture incomplete
    assert cli.main(["data", "videomme", "--root", root, "--hub-mirror", hub, "--no-count-check"]) in (0, 1)
    return hub, root


def _lmms_task(path, model_name=MODEL):
    """A task YAML of the installed lmms-eval, loaded by its own loader, with the per-model prompt arguments
    resolved as ``ConfigurableTask`` resolves them (``lmms_eval/api/task.py``: the model's entry, else ``default``)."""
    from lmms_eval.utils import load_yaml_config
    cfg = load_yaml_config(path, mode="full")
    spec = dict(cfg.get("lmms_eval_specific_kwargs") or {})
    kwargs = spec[model_name] if model_name in spec else {**spec, **spec.get("default", {})}
    return cfg, kwargs


@pytest.fixture(scope="module")
def frame_spy():
    """Every list of frame indices decord is asked for (lmms-eval's loader and the kit's both read through it)."""
    import decord
    calls = []
    original = decord.VideoReader.get_batch

    def get_batch(self, indices):
        calls.append([int(i) for i in indices])
        return original(self, indices)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decord.VideoReader, "get_batch", get_batch)
        yield calls


def _check_parity(plugin_lm, bench, item, doc, cfg, kwargs, frame_spy):
    from lmms_eval.models.model_utils.load_video import load_video_decord
    from prunevid import video
    from prunevid.integrations.lmms_eval.models import greedy_settings
    # called as ConfigurableTask calls it: with the prompt arguments when it takes two parameters
    to_visual = cfg["doc_to_visual"]
    visual = to_visual(doc, kwargs) if len(inspect.signature(to_visual).parameters) == 2 else to_visual(doc)
    context = cfg["doc_to_text"](doc, kwargs)
    # frames: lmms-eval's llava_onevision reader (load_video_decord: linspace over the file) and the plugin's
    frame_spy.clear()
    theirs = load_video_decord(visual, plugin_lm.max_frames_num)
    ours, _ = plugin_lm.load_frames(plugin_lm.video_path(visual))
    assert len(frame_spy) == 2 and frame_spy[0] == frame_spy[1], (item.id, frame_spy)
    assert (ours.numpy() == theirs).all()
    # question: lmms-eval's doc_to_text is the kit's lmms-eval text; the plugin renders it as the runner does
    kit_prompt = bench.prompt(item, "lmms-eval")
    assert context == kit_prompt.text, item.id
    assert plugin_lm.render(context) == video.build_prompt(plugin_lm.tokenizer, kit_prompt.text,
                                                           system=kit_prompt.system)
    # generation: the task YAML's settings as the plugin runs them are the kit's
    assert greedy_settings(cfg["generation_kwargs"]) == bench.gen_kwargs("lmms-eval")
    return frame_spy[0]


@pytest.fixture(scope="module")
def tiny_plugin():
    from prunevid.integrations.lmms_eval.models import PruneVidLlavaOneVision
    return PruneVidLlavaOneVision(pretrained="tiny", device="cpu")          # max_frames_num 32, lmms-eval's default


def test_mvbench_protocol_parity_with_lmms_eval_task_utils(converted, tiny_plugin, frame_spy, tmp_path, monkeypatch):
    import lmms_eval
    from prunevid import benchmarks
    hub, root = converted
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))           # mvbench/utils.py reads it when lmms-eval loads the task
    tasks_dir = os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", "mvbench")
    bench = benchmarks.get("mvbench")
    items = {it.id: it for it in bench.items(root)}
    checked = 0
    for key in ("action_antonym", "action_sequence"):
        cfg, kwargs = _lmms_task(os.path.join(tasks_dir, f"mvbench_{key}.yaml"))
        with open(os.path.join(hub, "OpenGVLab/MVBench/json", f"{key}.json")) as f:
            docs = json.load(f)                           # the rows as the dataset holds them
        folders = cfg["doc_to_visual"].__globals__["DATA_LIST"]      # mvbench/utils.py: task -> video folder
        for i, doc in enumerate(docs):
            item = items[f"{key}/{i}"]
            if not os.path.isfile(item.video):
                continue                                  # the fixture's one missing video
            # where lmms-eval finds the file (its cache of the dataset's video branch): the same video
            dest = hf_home / cfg["dataset_kwargs"]["cache_dir"] / folders[kwargs["sub_task"]] / doc["video"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.symlink(item.video, dest)
            idx = _check_parity(tiny_plugin, bench, item, doc, cfg, kwargs, frame_spy)
            assert len(idx) == 32
            checked += 1
    assert checked == 3


def test_videomme_protocol_parity_with_lmms_eval_task_utils(converted, tiny_plugin, frame_spy, tmp_path, monkeypatch):
    import lmms_eval
    import pyarrow.parquet as pq
    from prunevid import benchmarks
    hub, root = converted
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    cfg, kwargs = _lmms_task(os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", "videomme", "videomme.yaml"))
    docs = pq.read_table(os.path.join(hub, "lmms-lab/Video-MME/videomme/test-00000-of-00001.parquet")).to_pylist()
    bench = benchmarks.get("videomme")
    items = {it.id: it for it in bench.items(root)}
    checked = 0
    for doc in docs:
        item = items[doc["question_id"]]
        if not os.path.isfile(item.video):
            continue                                  # in no chunk of the fixture (videomme_doc_to_visual would exit)
        dest = hf_home / cfg["dataset_kwargs"]["cache_dir"] / "data" / f"{doc['videoID']}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink(item.video, dest)
        _check_parity(tiny_plugin, bench, item, doc, cfg, kwargs, frame_spy)
        checked += 1
    assert checked == 9                                   # 3 of the fixture's 4 videos, 3 questions each


@pytest.mark.parametrize("model_name,tiny", [("prunevid_llava_onevision", "tiny"),
                                             ("prunevid_qwen2_5_vl", "tiny-qwen2.5-vl"),
                                             ("prunevid_llava_next_video", "tiny-llava-next-video")])
def test_every_plugin_model_answers_as_the_runner(model_name, tiny, converted, tmp_path, monkeypatch):
    """On an MVBench fixture item, PruneVid on each architecture: the plugin's reply and statistics are the
    runner's under ``--protocol lmms-eval`` (4 frames)."""
    import lmms_eval
    from prunevid.harness import runner
    hub, root = converted
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = runner.evaluate(benchmark="mvbench", model=tiny, method="prunevid", protocol="lmms-eval", frames=4,
                          data_root=root, output_dir=str(tmp_path / "runner"), progress=False)
    with open(tmp_path / "runner" / "samples.jsonl") as f:
        ref = {r["id"]: r for r in map(json.loads, f)}["action_antonym/0"]
    cfg, kwargs = _lmms_task(os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", "mvbench",
                                          "mvbench_action_antonym.yaml"), model_name)
    with open(os.path.join(hub, "OpenGVLab/MVBench/json/action_antonym.json")) as f:
        doc = json.load(f)[0]
    lm = _make(model_name, f"pretrained={tiny},method=prunevid,max_frames_num=4")
    assert lm.config.to_dict() == {k: v for k, v in res["method"].items() if k != "name"}
    video = os.path.join(root, "MVBench", "video", "ssv2_video", doc["video"])
    text, row = lm.respond(cfg["doc_to_text"](doc, kwargs), cfg["generation_kwargs"], [video], "mvbench_action_antonym",
                           0, "train")
    assert text == ref["prediction"].strip()
    _same_row(row, ref, f"{model_name} action_antonym/0")
    assert row["retained_ratio"] < 1.0


# ---------------------------------------------------------------------------------------- where the statistics go
def test_statistics_files_follow_lmms_evals_output_or_the_given_folder(tmp_path):
    from prunevid.integrations.lmms_eval.stats_log import StatsLog, evaluation_context
    assert evaluation_context() == (None, None)          # not built by simple_evaluate: nothing to follow
    assert StatsLog({}).folder() is None and StatsLog({}).write_summary() is None

    class Tracker:                                          # what an lmms-eval EvaluationTracker holds by then
        output_path = str(tmp_path / "logs")

        class general_config_tracker:
            model_name_sanitized = "org__model"
    log = StatsLog({"method": {"name": "none"}}, tracker=Tracker(), datetime_str="20261206_101010")
    row = {"id": "t/0", "task": "t", "doc_id": 0, "category": "t", "prediction": "A", "parsed": None, "answer": None,
           "correct": None, "error": None, "retained_ratio": 1.0, "prefill_ms": 2.0, "time_s": 0.1}
    log.add(row)
    log.add({**row, "id": "t/1", "doc_id": 1, "error": "VideoError: unreadable", "retained_ratio": None})
    path = log.write_summary()
    assert path == str(tmp_path / "logs" / "org__model" / "20261206_101010_prunevid_results.json")
    with open(path) as f:
        summary = json.load(f)
    assert summary["tasks"]["t"]["n_samples"] == {"done": 2, "errors": 1}
    assert summary["tasks"]["t"]["tokens"]["retained_ratio"] == 1.0
    with open(tmp_path / "logs" / "org__model" / "20261206_101010_prunevid_samples_t.jsonl") as f:
        assert [json.loads(line)["doc_id"] for line in f] == [0, 1]
    given = StatsLog({}, folder=str(tmp_path / "given"), tracker=Tracker(), datetime_str="d", rank=1, world_size=2)
    assert given.samples_path("t") == str(tmp_path / "given" / "d_prunevid_samples_t_rank1.jsonl")
