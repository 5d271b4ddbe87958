import json
import os

import pytest

from prunevid.harness import cli, results


def test_run_writer_resumes_and_repairs_a_torn_line(tmp_path):
    w = results.RunWriter(str(tmp_path))
    row = {k: None for k in results.SAMPLE_FIELDS}
    w.append_sample(dict(row, id="a"))
    w.append_sample(dict(row, id="b"))
    with open(w.samples_path, "a") as f:
        f.write('{"id": "c", "categ')                     # interrupted mid-line
    assert w.done_ids() == {"a", "b"}
    w.append_sample(dict(row, id="c"))
    assert [r["id"] for r in w.read_samples()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="lacks"):
        w.append_sample({"id": "d"})


def test_results_json_is_complete_and_atomic(tmp_path):
    w = results.RunWriter(str(tmp_path))
    res = results.base_results(config={}, method={"name": "none"}, n_samples={}, metrics={}, tokens={}, flops=None,
                               timing={})
    w.write_results(res)
    data = json.loads(open(w.results_path).read())
    assert set(results.RESULT_FIELDS) <= set(data) and data["versions"]["prunevid"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    with pytest.raises(ValueError, match="lack"):
        w.write_results({"run_id": "x"})


def test_set_pairs_are_typed_by_the_methods_config():
    from prunevid import methods
    from prunevid.harness.cli_args import parse_set
    pairs = parse_set(["alpha=0.3", "selected_layer=2", "stage1=false", "seed=none", "scoring=official"])
    assert pairs == {"alpha": "0.3", "selected_layer": "2", "stage1": "false", "seed": "none", "scoring": "official"}
    cfg = methods.make_config("prunevid", pairs)
    assert (cfg.alpha, cfg.selected_layer, cfg.stage1, cfg.seed, cfg.scoring) == (0.3, 2, False, None, "official")
    assert methods.make_config("fastv", parse_set(["K=3", "retain=0.25"])).K == 3
    assert methods.make_config("dycoke", parse_set(["decode_pruning=true", "L=none"])).L == 3    # none: the default
    with pytest.raises(ValueError, match="stage1 must be true or false"):
        methods.make_config("prunevid", {"stage1": "yes"})
    with pytest.raises(ValueError, match="alpha must be a number"):
        methods.make_config("prunevid", {"alpha": "high"})
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['alhpa'\]"):
        methods.make_config("prunevid", parse_set(["alhpa=0.3"]))
    with pytest.raises(ValueError, match="expects key=value"):
        parse_set(["alpha"])


def test_clip_walkthrough_writes_report_and_results(tmp_path, capsys):
    out = tmp_path / "clip"
    rc = cli.main(["clip", "--frames", "8", "--repeats", "1", "--max-new-tokens", "2", "--output-dir", str(out),
                   "--set", "selected_layer=1"])
    assert rc == 0
    html = (out / "index.html").read_text()
    assert "PruneVid on one clip" in html and "data:image/png;base64" in html
    res = json.loads((out / "run" / "results.json").read_text())
    assert res["checks"]["stages_off_bit_identical"] is True
    assert res["tokens"]["visual_tokens_in"] == 8 * 49
    assert 0 < res["tokens"]["retained_ratio"] < res["tokens"]["retained_ratio_stage1"] < 1
    out_text = capsys.readouterr().out
    assert "retained" in out_text and "[demo]" not in out_text and out_text.count("[clip]") == 4
    # both generated texts, labelled, and the page says the model is random
    assert "<td>unpruned</td>" in html and "<td>pruned (PruneVid," in html and "Random model." in html
    assert res["config"]["random_weights"] is True and res["complete"] is True
    row = json.loads((out / "run" / "samples.jsonl").read_text())
    assert "prediction_unpruned" in row and row["prediction"] is not None


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["clip", "--video", "/no/such/clip.mp4", "--frames", "4"]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["clip", "--set", "alpha=7"]) == 2
