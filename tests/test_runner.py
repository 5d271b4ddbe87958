"""The eval runner end to end on generated fixtures with the tiny model: results written, per-category scores,
resume after a killed run, corrupt videos counted not fatal, refusal to mix runs, one-line CLI errors."""
import json
import os
import subprocess
import sys

import pytest

import fixtures
from prunevid import models
from prunevid.harness import cli, item, results, runner

BENCHES = ("mvbench", "videomme", "egoschema", "vcgbench")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is fastest on one thread, and far more so on a busy 2-core machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def datas(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datas"))
    info = {name: make(root) for name, make in fixtures.MAKERS.items()}
    return root, info


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny")


def _eval(tiny, root, out, bench, **kw):
    kw.setdefault("frames", 4)
    kw.setdefault("protocol", "official")
    return runner.evaluate(benchmark=bench, model="tiny", data_root=root, output_dir=str(out), loaded=tiny,
                           progress=False, **kw)


def _rows(out):
    return results.RunWriter(str(out)).read_samples()


@pytest.mark.parametrize("bench", BENCHES)
def test_end_to_end(bench, datas, tiny, tmp_path):
    root, info = datas
    res = _eval(tiny, root, tmp_path / "run", bench)
    on_disk = json.load(open(tmp_path / "run" / "results.json"))
    assert on_disk["run_id"] == res["run_id"]
    assert set(results.RESULT_FIELDS) <= set(on_disk)
    n = on_disk["n_samples"]
    assert n["total"] == n["done"] == info[bench]["n_items"]
    assert n["errors"] == info[bench]["n_errors"] == 1          # the corrupt video: counted, not fatal
    rows = _rows(tmp_path / "run")
    assert len(rows) == n["total"] and len({r["id"] for r in rows}) == len(rows)
    assert all(set(results.SAMPLE_FIELDS) <= set(r) for r in rows)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and "Error" in bad[0]["error"]
    cfg = on_disk["config"]
    assert cfg["frames"] == 4 and cfg["protocol"] == "official" and cfg["gen_kwargs"]["max_new_tokens"] == 100
    assert on_disk["method"]["name"] == "prunevid" and on_disk["method"]["selected_layer"] == 2
    tok = on_disk["tokens"]
    assert tok["visual_tokens_in"] == 4 * 49 and 0 < tok["retained_ratio"] < 1
    assert on_disk["timing"]["prefill_ms"] > 0 and on_disk["timing"]["total_s"] > 0
    fl = on_disk["flops"]
    assert fl["backend"] == "analytic" and 0 < fl["ratio_vs_unpruned"] < 1 and fl["prefill"] > 0
    m = on_disk["metrics"]
    if bench == "vcgbench":
        assert m["scores"] is None and set(m["by_category_counts"]) == {"generic", "temporal", "consistency"}
        cons = [r for r in rows if r["category"] == "consistency"][0]
        assert "prediction2" in cons
    else:
        assert 0 <= m["accuracy"] <= 100 and m["by_category"]
        assert n["unparsed"] == sum(1 for r in rows if r.get("unparsed"))
    if bench == "mvbench":
        assert set(m["by_category"]) == info["mvbench"]["categories"]
    if bench == "videomme":
        assert {"short", "medium", "long", "domain/Knowledge", "task_type/Counting Problem"} <= set(m["by_category"])
    if bench == "egoschema":
        assert m["n_scored"] == info["egoschema"]["n_scored"]
        sub = json.load(open(tmp_path / "run" / "submission.json"))
        assert set(sub) <= set(fixtures.EGO_UIDS) and all(0 <= v <= 4 for v in sub.values())


@pytest.mark.parametrize("bench", BENCHES)
def test_resume_after_kill_same_scores(bench, datas, tiny, tmp_path, monkeypatch):
    root, info = datas
    full = _eval(tiny, root, tmp_path / "full", bench)

    calls = []
    real = runner.run_item

    def dying(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt   # Ctrl-C / kill after two items
        calls.append(a[1].id)
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_item", dying)
    with pytest.raises(KeyboardInterrupt):
        _eval(tiny, root, tmp_path / "resumed", bench)
    interim = json.load(open(tmp_path / "resumed" / "results.json"))     # Ctrl-C leaves an interim results.json
    assert interim["complete"] is False and interim["n_samples"]["done"] == 2
    assert len(_rows(tmp_path / "resumed")) == 2

    second = []

    def counting(*a, **k):
        second.append(a[1].id)
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_item", counting)
    res = _eval(tiny, root, tmp_path / "resumed", bench)
    assert not set(second) & set(calls) and len(second) == info[bench]["n_items"] - 2   # no item run twice
    rows = _rows(tmp_path / "resumed")
    assert len(rows) == len({r["id"] for r in rows}) == info[bench]["n_items"]
    assert res["metrics"] == full["metrics"] and res["n_samples"] == full["n_samples"]
    by_id = {r["id"]: r["prediction"] for r in _rows(tmp_path / "full")}
    assert {r["id"]: r["prediction"] for r in rows} == by_id
    # a third run has nothing left to do and gives the same results
    res3 = _eval(tiny, root, tmp_path / "resumed", bench)
    assert res3["metrics"] == full["metrics"] and res3["run_id"] == res["run_id"]


def test_torn_last_line_is_rerun(datas, tiny, tmp_path):
    root, _ = datas
    out = tmp_path / "run"
    _eval(tiny, root, out, "videomme", limit=2)
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"id": "301-1", "categ')   # a crash mid-write
    res = _eval(tiny, root, out, "videomme")
    assert res["n_samples"]["done"] == 4 and len(_rows(out)) == 4


def test_limit_then_extend(datas, tiny, tmp_path):
    root, _ = datas
    res = _eval(tiny, root, tmp_path / "run", "mvbench", limit=2)
    assert res["n_samples"] == {"total": 2, "done": 2, "errors": 0, "unparsed": res["n_samples"]["unparsed"]}
    assert res["config"]["limit"] == 2
    res = _eval(tiny, root, tmp_path / "run", "mvbench")   # same run, more items: resumes
    assert res["n_samples"]["done"] == 5


def test_different_config_refused(datas, tiny, tmp_path):
    root, _ = datas
    _eval(tiny, root, tmp_path / "run", "mvbench", limit=1)
    with pytest.raises(ValueError, match="different run.*alpha"):
        _eval(tiny, root, tmp_path / "run", "mvbench", limit=1, params={"alpha": 0.3})
    with pytest.raises(ValueError, match="different run.*protocol"):
        _eval(tiny, root, tmp_path / "run", "mvbench", limit=1, protocol="lmms-eval")
    with pytest.raises(ValueError, match="different run.*benchmark"):
        _eval(tiny, root, tmp_path / "run", "videomme", limit=1)


def test_other_weights_under_the_same_name_are_another_run(datas, tiny, tmp_path):
    """A re-shipped or retrained model keeps its name; its weights fingerprint tells the runs apart, so a folder
    of the old weights is refused rather than resumed with answers of two models."""
    import dataclasses
    root, _ = datas
    one, two = dataclasses.replace(tiny, fingerprint="sha256:one"), dataclasses.replace(tiny, fingerprint="sha256:two")
    _eval(one, root, tmp_path / "run", "mvbench", limit=1)
    assert json.loads((tmp_path / "run" / runner.RUN_CONFIG).read_text())["weights"] == "sha256:one"
    _eval(one, root, tmp_path / "run", "mvbench", limit=2)                        # same weights: resumes
    with pytest.raises(ValueError, match="different run.*weights.*sha256:one.*sha256:two"):
        _eval(two, root, tmp_path / "run", "mvbench", limit=2)


def test_weights_fingerprint_follows_the_weights_not_the_folder(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    loaded = models.load("tiny")
    loaded.model.save_pretrained(a)
    loaded.tokenizer.save_pretrained(a)
    again = models.load(str(a))
    assert again.fingerprint == models.weights_fingerprint(str(a)) == models.fingerprint_of(str(a))
    assert again.fingerprint.startswith("sha256:") and models.load("tiny").fingerprint is None
    import shutil
    shutil.copytree(a, b)
    assert models.weights_fingerprint(str(b)) == again.fingerprint          # a copy is the same model
    import torch
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1e-3)
    loaded.model.save_pretrained(b)                                          # retrained: another model
    assert models.weights_fingerprint(str(b)) != again.fingerprint
    # hub snapshots are named by their commit; checkpoints above the size limit by their files' stat
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    assert models.weights_fingerprint(str(snap)) == "hub:" + "ab" * 20
    monkeypatch.setattr(models, "FULL_HASH_BYTES", 0)
    assert models.weights_fingerprint(str(a)).startswith("stat:")
    assert models.fingerprint_of("tiny") is None and models.fingerprint_of(str(tmp_path / "none")) is None


def test_method_none_and_lmms_protocol(datas, tiny, tmp_path):
    root, _ = datas
    res = _eval(tiny, root, tmp_path / "run", "mvbench", method="none", protocol="lmms-eval", frames=6)
    assert res["tokens"]["retained_ratio"] == 1.0 and res["tokens"]["visual_tokens_in"] == 6 * 49
    assert res["config"]["gen_kwargs"]["max_new_tokens"] == 16 and res["method"] == {"name": "none"}
    assert res["flops"]["ratio_vs_unpruned"] == 1.0


def test_correct_answers_are_scored(datas, tiny, tmp_path, monkeypatch):
    """With generation replaced by the right letter, every readable item is correct (runner + parser + scorer)."""
    root, _ = datas
    real = item.greedy_generate
    answers = {}

    def fake(model, inputs, max_new_tokens, eos_ids, stop=None):
        toks, stats, p, d = real(model, inputs, 1, eos_ids)
        text = tiny.tokenizer.decode(inputs["input_ids"][0])
        letter = answers[next(k for k in answers if k in text)]
        return tiny.tokenizer.encode(f"{letter}) yes", add_special_tokens=False), stats, p, d

    from prunevid import benchmarks
    for it in benchmarks.get("mvbench").items(root):
        answers[it.question + "\nOptions:\n" + "\n".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(it.candidates))] = it.answer_letter
    monkeypatch.setattr(item, "greedy_generate", fake)
    res = _eval(tiny, root, tmp_path / "run", "mvbench")
    assert res["metrics"]["accuracy"] == pytest.approx(80.0)          # 4 of 5; the corrupt video is wrong
    assert res["metrics"]["accuracy_valid"] == 100.0 and res["n_samples"]["unparsed"] == 0


def _cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_one_line_errors(capsys, tmp_path):
    code, err = _cli(["eval", "--benchmark", "nope", "--model", "tiny"], capsys)
    assert code == 2 and err.count("\n") == 0 and "unknown benchmark 'nope'" in err
    code, err = _cli(["eval", "--benchmark", "mvbench", "--model", "tiny", "--method", "nope"], capsys)
    assert code == 2 and err.count("\n") == 0 and "unknown method 'nope'" in err
    code, err = _cli(["eval", "--benchmark", "mvbench", "--model", "tiny", "--set", "gamma=1"], capsys)
    assert code == 2 and err.count("\n") == 0 and "gamma" in err
    code, err = _cli(["eval", "--benchmark", "videomme", "--model", "tiny", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 0 and "python -m prunevid data videomme" in err
    code, err = _cli(["eval", "--benchmark", "mvbench", "--set", "alpha=7", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 0 and "alpha" in err


def test_cli_subprocess(datas, tmp_path):
    root, _ = datas
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "prunevid", "eval", "--benchmark", "egoschema", "--model", "tiny", "--data-root", root,
           "--output-dir", str(out), "--frames", "4", "--limit", "2", "--protocol", "lmms-eval", "--set", "alpha=0.3",
           "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "[eval] egoschema" in p.stdout
    res = json.load(open(out / "results.json"))
    assert res["method"]["alpha"] == 0.3 and res["n_samples"]["total"] == 2
    help_text = subprocess.run([sys.executable, "-m", "prunevid", "eval", "--help"], capture_output=True, text=True,
                               env=env).stdout
    for flag in ("--benchmark", "--model", "--method", "--data-root", "--output-dir", "--limit", "--frames", "--dtype",
                 "--device", "--seed", "--protocol", "--set"):
        assert flag in help_text


# ---------------------------------------------------------------------------------------------------------
# VCG judge against a small OpenAI-compatible server on loopback
class _JudgeServer:
    def __init__(self, fail_first: int = 1):
        import http.server
        import threading
        self.requests = []
        self.fail_left = fail_first
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if server.fail_left > 0:
                    server.fail_left -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                user = body["messages"][1]["content"]
                score = 4 if "Question 1:" in user else 3
                reply = {"choices": [{"message": {"role": "assistant", "content": "{'score': %d}" % score}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_vcg_judge_loopback_and_cache(datas, tiny, tmp_path, monkeypatch):
    from prunevid.benchmarks import vcg_judge
    root, _ = datas
    server = _JudgeServer(fail_first=1)
    try:
        monkeypatch.setenv("PRUNEVID_JUDGE_BASE_URL", server.url)
        monkeypatch.setenv("PRUNEVID_JUDGE_MODEL", "judge-x")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setattr(vcg_judge.time, "sleep", lambda s: None)      # back-off without waiting
        res = _eval(tiny, root, tmp_path / "run", "vcgbench")
        s = res["metrics"]["scores"]
        # generic: 1 readable item (3) + 1 errored item (0) -> 1.5; temporal 3; consistency 4
        assert s["CI"] == s["DO"] == s["CU"] == 1.5 and s["TU"] == 3.0 and s["CO"] == 4.0
        assert s["avg"] == pytest.approx((1.5 * 3 + 3 + 4) / 5)
        n_calls = len(server.requests)
        assert n_calls == 3 + 1 + 1 + 1          # CI, DO, CU, TU, CO + one retried 500
        req = server.requests[-1]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
        assert req["body"]["model"] == "judge-x" and req["body"]["temperature"] == 0.0
        assert res["metrics"]["judge"]["failures"] == 0
        # a rerun pays nothing: every reply comes from the cache
        res2 = _eval(tiny, root, tmp_path / "run", "vcgbench")
        assert len(server.requests) == n_calls and res2["metrics"]["scores"] == s
    finally:
        server.close()


def test_vcg_judge_failure_scores_zero(tmp_path, monkeypatch):
    from prunevid.benchmarks import vcg_judge
    monkeypatch.setattr(vcg_judge.time, "sleep", lambda s: None)
    j = vcg_judge.Judge("http://127.0.0.1:9", retries=2, timeout_s=2, cache_path=str(tmp_path / "c.jsonl"))
    assert j.score("CI", question="q", answer="a", pred="p") == 0.0
    assert j.failures == 1 and j.calls == 2
    assert vcg_judge.parse_score("{'score': 5}") == 5.0 and vcg_judge.parse_score("Score: 2") == 2.0
    assert vcg_judge.parse_score("no idea") is None


def test_generate_prunes_like_the_runner_loop(tiny):
    """model.generate() (which encodes the video before the prefill and passes mm_encoder_outputs) runs the
    pruned prefill too, and gives the runner loop's greedy tokens and statistics."""
    import torch
    import prunevid
    from prunevid import video
    frames = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = video.build_inputs(tiny, frames, "Question: what?", system="sys", answer_prefix="Best option:(")
    prunevid.apply(tiny.model, selected_layer=2)
    try:
        toks, stats, _, _ = item.greedy_generate(tiny.model, inputs, 8, set())
        prunevid.state.get(tiny.model).stats = prunevid.patch.empty_stats()
        with torch.no_grad():
            gen = tiny.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                      min_new_tokens=8)
        assert gen[0, inputs["input_ids"].shape[1]:].tolist() == toks
        assert prunevid.stats(tiny.model) == {k: stats[k] for k in prunevid.STATS_KEYS}
        assert stats["visual_tokens_stage2"] < stats["visual_tokens_in"] and 0 < stats["flops_ratio"] < 1
    finally:
        prunevid.remove(tiny.model)


# ---------------------------------------------------------------------------------------------------------
# Several processes: torchrun on CPU with 2 ranks (gloo)
def test_two_process_run_matches_single(datas, tiny, tmp_path):
    root, info = datas
    single = _eval(tiny, root, tmp_path / "single", "mvbench")
    out = tmp_path / "dist"
    _eval(tiny, root, out, "mvbench", limit=2)           # a partial single-process run first: resumed by 2 ranks
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "prunevid",
           "eval", "--benchmark", "mvbench", "--model", "tiny", "--data-root", root, "--output-dir", str(out),
           "--frames", "4", "--protocol", "official", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("[eval] mvbench") == 1                       # rank 0 reports
    res = json.load(open(out / "results.json"))
    assert res["metrics"] == single["metrics"] and res["n_samples"] == single["n_samples"]
    rows = _rows(out)
    assert len(rows) == len({r["id"] for r in rows}) == info["mvbench"]["n_items"]
    assert {r["id"]: r["prediction"] for r in rows} == {r["id"]: r["prediction"] for r in _rows(tmp_path / "single")}
    assert not list(out.glob("samples.rank*.jsonl"))                 # shards merged into samples.jsonl


def test_leftover_shards_are_merged_not_rerun(datas, tiny, tmp_path, monkeypatch):
    """A multi-rank run that died leaves per-rank shards; any later run (any number of ranks) reuses them."""
    root, _ = datas
    full = _eval(tiny, root, tmp_path / "full", "videomme")
    out = tmp_path / "crashed"
    _eval(tiny, root, out, "videomme", limit=1)
    rows = _rows(tmp_path / "full")
    with open(out / "samples.rank1.jsonl", "w") as f:
        for r in rows[1:3]:
            f.write(json.dumps(r) + "\n")
    seen = []
    real = runner.run_item
    monkeypatch.setattr(runner, "run_item", lambda *a, **k: seen.append(a[1].id) or real(*a, **k))
    res = _eval(tiny, root, out, "videomme")
    assert seen == [rows[3]["id"]]
    assert res["metrics"] == full["metrics"] and len(_rows(out)) == 4
    assert not (out / "samples.rank1.jsonl").exists()


def test_egoschema_submit_loopback(tmp_path, capsys, monkeypatch):
    import http.server
    import threading
    from prunevid.benchmarks import egoschema
    got = []
    status = {"code": 500}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            code = status["code"]
            data = b"Total result: 1 correct, 0 wrong, 5030 missing, 0 invalid, accuracy: 0.02\n" \
                   b"Subset: accuracy: 100.0" if code == 200 else b"oops"
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/api/upload/"
    sub = tmp_path / "submission.json"
    sub.write_text(json.dumps({fixtures.EGO_UIDS[0]: 3}))
    monkeypatch.setattr("time.sleep", lambda s: None)          # back-off without waiting
    try:
        code, err = _cli(["submit", str(sub), "--url", url, "--retries", "2"], capsys)
        assert code == 2 and err.count("\n") == 0 and "failed after 2 tries (HTTP 500" in err and len(got) == 2
        status["code"] = 200
        out = egoschema.submit(str(sub), url)
        assert got[-1] == {fixtures.EGO_UIDS[0]: 3} and out["accuracies"] == [0.02, 100.0]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_media_cache_sweep_decodes_and_encodes_once(datas, tiny, tmp_path, monkeypatch):
    """With $PRUNEVID_CACHE_DIR, a sweep of methods decodes and encodes each video once, with unchanged answers."""
    from prunevid import video
    root, info = datas
    plain = {m: _eval(tiny, root, tmp_path / f"plain-{m}", "mvbench", method=m) for m in ("prunevid", "none")}
    monkeypatch.setenv("PRUNEVID_CACHE_DIR", str(tmp_path / "cache"))
    decoded, encoded = [], []
    real_video, real_folder, real_encode = video.load_video, video.load_frame_folder, item._encode
    monkeypatch.setattr(video, "load_video", lambda *a, **k: decoded.append(a[0]) or real_video(*a, **k))
    monkeypatch.setattr(video, "load_frame_folder", lambda *a, **k: decoded.append(a[0]) or real_folder(*a, **k))
    monkeypatch.setattr(item, "_encode", lambda *a: encoded.append(1) or real_encode(*a))
    for m in ("prunevid", "none"):
        res = _eval(tiny, root, tmp_path / f"cached-{m}", "mvbench", method=m)
        assert res["metrics"] == plain[m]["metrics"] and res["tokens"] == plain[m]["tokens"]
        assert {r["id"]: r["prediction"] for r in _rows(tmp_path / f"cached-{m}")} == \
               {r["id"]: r["prediction"] for r in _rows(tmp_path / f"plain-{m}")}
    readable = info["mvbench"]["n_items"] - info["mvbench"]["n_errors"]
    # each readable video decoded once; the corrupt one is tried by both runs (errors are not cached)
    assert len(decoded) == readable + 2 and len(encoded) == readable


def test_config_rejected_by_model_writes_nothing(datas, tiny, tmp_path):
    """A hyperparameter the model rejects (layer beyond its depth) fails before the run folder is claimed, so
    the corrected command can use the same folder."""
    root, _ = datas
    with pytest.raises(ValueError, match="selected_layer"):
        _eval(tiny, root, tmp_path / "run", "mvbench", limit=1, params={"selected_layer": 99})
    assert not (tmp_path / "run" / runner.RUN_CONFIG).exists()
    res = _eval(tiny, root, tmp_path / "run", "mvbench", limit=1, params={"selected_layer": 1})
    assert res["method"]["selected_layer"] == 1
    from prunevid import is_patched
    assert not is_patched(tiny.model)


def test_every_method_runs(datas, tiny, tmp_path):
    from prunevid import methods
    root, _ = datas
    for m in methods.available():
        if m == "oracle":         # reads the generator's object masks: a one-line error here (tests/test_oracle.py)
            continue
        params = {"L": 1} if m == "dycoke" else {}
        res = _eval(tiny, root, tmp_path / m, "videomme", method=m, params=params, limit=2)
        assert res["n_samples"]["done"] == 2 and res["method"]["name"] == m


def test_media_cache_gives_same_answers_for_every_method(datas, tiny, tmp_path, monkeypatch):
    from prunevid import methods
    from prunevid.harness.cache import uses_feature_cache
    root, _ = datas
    assert not uses_feature_cache("visionzip") and uses_feature_cache("fastv")
    plain = {}
    every = [m for m in methods.available() if m != "oracle"]    # the oracle needs the synthetic benchmark's masks
    for m in every:
        params = {"L": 1} if m == "dycoke" else {}
        _eval(tiny, root, tmp_path / f"plain-{m}", "videomme", method=m, params=params, limit=2)
        plain[m] = {r["id"]: (r["prediction"], r.get("visual_tokens_stage2")) for r in _rows(tmp_path / f"plain-{m}")}
    monkeypatch.setenv("PRUNEVID_CACHE_DIR", str(tmp_path / "cache"))
    for m in every:
        params = {"L": 1} if m == "dycoke" else {}
        _eval(tiny, root, tmp_path / f"cached-{m}", "videomme", method=m, params=params, limit=2)
        got = {r["id"]: (r["prediction"], r.get("visual_tokens_stage2")) for r in _rows(tmp_path / f"cached-{m}")}
        assert got == plain[m], m


ARCHS = {"llava_next_video": {}, "pllava": {}, "qwen2_vl": {"version": "2"}, "qwen2_5_vl": {}}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_other_architectures(arch, datas, tmp_path, monkeypatch):
    """The runner on every registered architecture: its greedy loop equals generate(), the protocol defaults to
    the model's (PLLaVA: official), and the feature cache gives the same answers."""
    import torch
    import prunevid
    from prunevid import video
    from prunevid.models import tiny as tiny_mod
    builder = "qwen2_vl" if arch.startswith("qwen") else arch
    model, tok = getattr(tiny_mod, f"build_tiny_{builder}")(**ARCHS[arch])
    spec = models.spec_for(model)
    lm = models.LoadedModel(model, tok, spec, models.VideoPreprocessing(
        size=getattr(model.config.vision_config, "image_size", 112)), arch)
    root, info = datas
    frames = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = video.build_inputs(lm, frames, "Question: what?", system="sys", answer_prefix="Best option:(")
    prunevid.apply(model, selected_layer=1)
    try:
        toks, _, _, _ = item.greedy_generate(model, inputs, 6, set())
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None)
        assert gen[0, inputs["input_ids"].shape[1]:].tolist() == toks
    finally:
        prunevid.remove(model)
    res = runner.evaluate(benchmark="videomme", model=arch, data_root=root, output_dir=str(tmp_path / "a"),
                          loaded=lm, progress=False, frames=4, limit=3)
    assert res["config"]["protocol"] == spec.defaults["protocol"] and res["n_samples"]["done"] == 3
    assert res["tokens"]["visual_tokens_stage2"] < res["tokens"]["visual_tokens_in"]
    monkeypatch.setenv("PRUNEVID_CACHE_DIR", str(tmp_path / "cache"))
    runner.evaluate(benchmark="videomme", model=arch, data_root=root, output_dir=str(tmp_path / "b"),
                    loaded=lm, progress=False, frames=4, limit=3)
    assert [r["prediction"] for r in _rows(tmp_path / "a")] == [r["prediction"] for r in _rows(tmp_path / "b")]


def test_default_benchmark_is_the_shipped_demo_model_s_world(tmp_path, monkeypatch):
    """`eval` and the notebooks default to the test split the shipped demo model was measured on (its eval.json)."""
    from prunevid import models
    record = os.path.join(models.DEMO_MODEL_DIR, "eval.json")
    if os.path.isfile(record):
        with open(record) as f:
            shipped = json.load(f).get("benchmarks", {}).get("test", "synthetic")
        assert models.demo_benchmark() == shipped == runner.DEFAULT_BENCHMARK
    monkeypatch.setattr(models, "DEMO_MODEL_DIR", str(tmp_path))
    assert models.demo_benchmark() == "synthetic"                           # nothing shipped: version 1
    (tmp_path / "eval.json").write_text(json.dumps({"test": {"accuracy": 78.6}}))
    assert models.demo_benchmark() == "synthetic"                           # a record that names no splits
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {"test": "synthetic-v3", "val": "synthetic-v3-val"}}))
    assert models.demo_benchmark() == "synthetic-v3"
