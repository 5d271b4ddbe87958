"""Smoke test of ``python -m prunevid bench`` on the tiny model (no timed assertions)."""
import json

import pytest

from prunevid.harness.cli import main


@pytest.mark.slow
def test_bench_tiny_smoke(capsys):
    assert main(["bench", "--preset", "tiny", "--frames", "8", "--repeats", "1", "--dtype", "float32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("prefill_speedup", "ideal_speedup", "stage1_overhead", "kv_ratio", "kv_ratio_expected",
                "end_to_end_speedup", "decode_speedup"):
        assert out[key] is not None and out[key] > 0, key
    assert out["ideal_speedup"] > 1
    for name in ("unpruned", "prunevid"):
        t = out["timing_ms"][name]
        assert {"vision_ms", "llm_prefill_ms", "end_to_end_ms", "decode_step_ms", "stage1_ms"} <= set(t)
        assert "error" not in out["memory"][name] and out["memory"][name]["peak_rss_prefill_bytes"] > 0
    # the KV cache after a PruneVid prefill holds text + kept visual entries only
    assert abs(out["kv_ratio"] - out["kv_ratio_expected"]) <= 0.01 * out["kv_ratio_expected"]
    assert out["timing_ms"]["unpruned"]["stage1_ms"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-pllava", "tiny-qwen2.5-vl"])
def test_bench_accepts_any_registered_model(capsys, name):
    assert main(["bench", "--model", name, "--frames", "8", "--repeats", "1", "--dtype", "float32", "--no-memory",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == name and out["tokens"]["visual_tokens_stage2"] < out["tokens"]["visual_tokens_in"]
    assert abs(out["kv_ratio"] - out["kv_ratio_expected"]) <= 0.01 * out["kv_ratio_expected"]


def test_bench_sweep_mode_times_variants_interleaved_in_one_process(tmp_path, capsys):
    """``--methods``: one model, the unpruned model and every variant timed round by round; the JSON holds the
    machine, the settings and one row per variant (no timed assertions)."""
    path = tmp_path / "sweep.json"
    assert main(["bench", "--preset", "tiny", "--frames", "4", "--repeats", "1", "--dtype", "float32",
                 "--decode-steps", "1", "--no-memory", "--methods", "prunevid,random", "--sweep-retain", "0.5",
                 "--point", "fastv@0.25", "--json-out", str(path)]) == 0
    out = json.loads(path.read_text())
    assert {"platform", "cpu_count", "torch_threads"} <= set(out["machine"])
    assert out["dtype"] == "float32" and out["repeats"] == 1 and out["frames"] == 4 and out["preset"] == "tiny"
    assert out["date"] and out["kind"] == "bench-sweep"
    names = [r["name"] for r in out["variants"]]
    assert names == ["prunevid@0.5", "random@0.5", "fastv@0.25"]
    assert [r["method"] for r in out["variants"]] == ["prunevid", "random", "fastv"]
    assert [r["params"]["retain"] for r in out["variants"]] == [0.5, 0.5, 0.25]
    # interleaved: a warm-up round and one timed round, each running the unpruned model then every variant
    assert out["order"] == [[rnd, n] for rnd in (0, 1) for n in ["unpruned"] + names]
    for r in out["variants"]:
        for key in ("retained_ratio", "llm_prefill_ms", "unpruned_llm_prefill_ms", "end_to_end_ms",
                    "unpruned_end_to_end_ms", "ideal_speedup"):
            assert r[key] is not None and r[key] > 0, (r["name"], key)
        assert abs(r["llm_prefill_speedup"] - r["unpruned_llm_prefill_ms"] / r["llm_prefill_ms"]) < 1e-9
        assert abs(r["end_to_end_speedup"] - r["unpruned_end_to_end_ms"] / r["end_to_end_ms"]) < 1e-9
        assert len(r["samples_ms"]["llm_prefill"]) == 1                        # the warm-up round is dropped
    # the random keep at 50% keeps half of the visual tokens in every layer: the FLOPs ideal is above 1
    assert abs(out["variants"][1]["retained_ratio"] - 0.5) < 0.02 and out["variants"][1]["ideal_speedup"] > 1
    # FastV runs its first K=2 layers on every token (its default K), the other layers on the kept ones
    from prunevid.harness import flops
    from prunevid.models.tiny import build_tiny_llava_onevision
    shape = flops.LLMShape.from_config(build_tiny_llava_onevision()[0].config)
    t = out["variants"][2]["tokens"]
    n_all, n_kept, n_text = t["visual_tokens_in"], t["visual_tokens_stage2"], t["text_tokens"]
    full = flops.llm_prefill_macs(shape, [n_all + n_text] * shape.layers)
    fastv = flops.llm_prefill_macs(shape, [n_all + n_text] * 2 + [n_kept + n_text] * (shape.layers - 2))
    assert n_kept < n_all and abs(out["variants"][2]["ideal_speedup"] - full / fastv) < 1e-9
