"""Smoke test of ``python -m prunevid bench`` on the tiny model (no timed assertions)."""
import json

import pytest

from prunevid.cli import main


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
