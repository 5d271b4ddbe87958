"""Data scripts offline: upstream-shaped fixtures in a local hub mirror -> official DATAS layout -> verify.

Nothing here touches the network: the download step reads a hub-mirror folder, and the real-Hub branch of
``fetch`` is checked against a stand-in for ``snapshot_download``.
"""
import json
import os
import subprocess
import sys

import pytest

import fixtures
from prunevid.harness import cli
from prunevid.data import common, egoschema, mvbench, vcgbench, videomme

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub")
    mirror, src = str(base / "hub"), str(base / "src")
    for make in fixtures.HUB_MAKERS.values():
        make(mirror, src)
    return mirror


def _data(argv, capsys):
    code = cli.main(["data"] + argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_mvbench(hub, tmp_path, capsys):
    root = str(tmp_path / "DATAS")
    code, out, _ = _data(["mvbench", "--root", root, "--hub-mirror", hub], capsys)
    assert code == 1 and "INCOMPLETE" in out            # fixture: 3 of 20 tasks, 1 missing video, small counts
    mv = os.path.join(root, "MVBench")
    assert json.load(open(os.path.join(mv, "json", "action_sequence.json")))[0]["start"] == 0.5
    assert os.path.exists(os.path.join(mv, "video", "star/Charades_v1_480/AAA01.mp4"))
    assert os.path.exists(os.path.join(mv, "video", "star/Charades_v1_480/EDXBD.mp4"))      # from data0613.zip
    assert not os.path.exists(os.path.join(mv, "video", "data0613"))
    assert os.path.exists(os.path.join(mv, "video", "ssv2_video/166583.webm"))
    assert len(os.listdir(os.path.join(mv, "video", "tvqa/frames_fps3_hq/castle_s01e01_seg02_clip_00"))) == 12
    rep = json.load(open(os.path.join(mv, "data_report.json")))
    assert rep["missing_videos"] == [os.path.join(mv, "video", "ssv2_video/", "missing_777.webm")]
    assert rep["counts"]["Action Sequence"] == [2, 200] and len(rep["missing_files"]) == 17
    assert rep["unreadable"] == []
    # the converted data is what the benchmark definition reads
    from prunevid import benchmarks
    items = benchmarks.get("mvbench").items(root)
    assert len(items) == 5 and items[-1].frame_folder


def test_videomme(hub, tmp_path, capsys):
    root = str(tmp_path / "DATAS")
    code, out, _ = _data(["videomme", "--root", root, "--hub-mirror", hub, "--no-count-check"], capsys)
    assert code == 1 and "missing videos: 1" in out       # one video not in any chunk
    per = {d: json.load(open(os.path.join(root, "Video-MME", "json", f"{d}.json"))) for d in ("short", "medium", "long")}
    assert [len(v) for v in per.values()] == [6, 3, 3]
    row = per["short"][1]
    assert row["candidates"] == ["Apple 1.", "Banana 1.", "Cherry 1.", "Date 1."]   # "A. " prefixes stripped
    assert row["answer"] == "Banana 1." and row["answer"] in row["candidates"]
    assert (row["domain"], row["sub_category"], row["task_type"]) == ("Knowledge", "Humanity & History",
                                                                      "Counting Problem")
    assert row["video"] == "fFjv93ACGo8.mp4" and row["question_id"] == "001-2"
    assert os.path.exists(os.path.join(root, "Video-MME", "data", "fFjv93ACGo8.mp4"))   # flat, no data/data
    assert videomme.strip_option("A. A. B. text", "A") == "A. B. text"


def test_egoschema(hub, tmp_path, capsys):
    root = str(tmp_path / "DATAS")
    code, out, _ = _data(["egoschema", "--root", root, "--hub-mirror", hub, "--no-count-check"], capsys)
    assert code == 0 and "OK" in out
    rows = json.load(open(os.path.join(root, "ego_schema", "json", "egoschema_fullset.json")))
    assert [r["q_uid"] for r in rows] == fixtures.EGO_UIDS
    assert rows[1]["answer"] == "c wants to fix the object" and rows[1]["answer_idx"] == 1
    assert rows[2]["answer"] is None and rows[0]["candidates"][0] == "c wants to clean the object"
    assert json.load(open(os.path.join(root, "ego_schema", "json", "subset_answers.json"))) == \
        {fixtures.EGO_UIDS[0]: 0, fixtures.EGO_UIDS[1]: 1}
    # the GitHub subset key may add answers
    extra = tmp_path / "subset_answers.json"
    extra.write_text(json.dumps({fixtures.EGO_UIDS[3]: 4}))
    rep = egoschema.prepare(root, mirror=hub, subset_answers=str(extra), check_counts=False, log=lambda *a: None)
    assert rep.counts["subset (public answers)"][0] == 3


def test_vcgbench_and_report(hub, tmp_path, capsys):
    root = str(tmp_path / "DATAS")
    code, out, _ = _data(["vcgbench", "--root", root, "--hub-mirror", hub], capsys)
    assert code == 1 and "differs from the known total" in out      # counts are checked by default
    qa = os.path.join(root, "VCGBench", "Zero_Shot_QA", "Benchmarking_QA")
    assert json.load(open(os.path.join(qa, "generic_qa.json")))[0] == {"video_name": "v_abc123", "Q": "What happens?",
                                                                       "A": "A square moves."}
    assert json.load(open(os.path.join(qa, "consistency_qa.json"))) == [
        {"video_name": "v_abc123", "Q1": "What colour is it?", "Q2": "Which colour does it have?", "A": "White."}]
    code, out, _ = _data(["vcgbench", "--root", root, "--verify-only", "--no-count-check"], capsys)
    assert code == 0 and "OK" in out
    # a corrupt video is caught by opening it, not by --quick
    fixtures.write_corrupt(os.path.join(root, "VCGBench", "Videos", "Benchmarking", "v_def456.mp4"))
    code, out, _ = _data(["vcgbench", "--root", root, "--verify-only", "--no-count-check"], capsys)
    assert code == 1 and "unreadable videos: 1" in out
    code, out, _ = _data(["vcgbench", "--root", root, "--verify-only", "--no-count-check", "--quick"], capsys)
    assert code == 0


def test_rerun_is_resumable(hub, tmp_path):
    root = str(tmp_path / "DATAS")
    logs = []
    videomme.prepare(root, mirror=hub, log=logs.append)
    assert any("3 file(s) copied" in l for l in logs)
    logs.clear()
    victim = os.path.join(root, "Video-MME", "data", "fFjv93ACGo8.mp4")
    os.unlink(victim)                                     # as if extraction had stopped before this member
    videomme.prepare(root, mirror=hub, log=logs.append)
    assert any("0 file(s) copied" in l for l in logs)       # nothing downloaded twice
    assert sum(int(l.split(": ")[1].split()[0]) for l in logs if "extracted" in l) == 1
    assert os.path.exists(victim)


def test_pair_consistency_mismatch():
    with pytest.raises(common.DataError, match="question_1"):
        vcgbench.pair_consistency([{"video_name": "v", "question_1": "q", "question_2": "None", "answer": "a"}])


def test_one_line_errors(hub, tmp_path, capsys):
    code, _, err = _data(["videomme", "--root", str(tmp_path), "--hub-mirror", str(tmp_path / "empty")], capsys)
    assert code == 2 and err.count("\n") == 1 and "not in the hub mirror" in err
    code, _, err = _data(["vcgbench", "--root", str(tmp_path), "--hub-mirror", hub, "--repo-id", "lmms-eval/Nope"],
                         capsys)
    assert code == 2 and "lmms-eval/Nope" in err
    bad = tmp_path / "snap" / "videos_chunked_01.zip"
    os.makedirs(bad.parent)
    bad.write_bytes(b"not a zip")
    import shutil
    shutil.copytree(os.path.join(hub, "lmms-lab/Video-MME/videomme"), tmp_path / "snap" / "videomme")
    code, _, err = _data(["videomme", "--root", str(tmp_path / "D"), "--download-dir", str(tmp_path / "snap"),
                          "--skip-download"], capsys)
    assert code == 2 and "not a valid zip" in err


def test_fetch_uses_snapshot_download(tmp_path, monkeypatch):
    """Without a mirror, fetch calls huggingface_hub.snapshot_download (resumable local_dir download)."""
    import huggingface_hub
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return kw["local_dir"]

    monkeypatch.delenv(common.HUB_MIRROR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    common.fetch("lmms-eval/Video-MME", str(tmp_path / "d"), revision="abc", allow_patterns=["x/*"], log=lambda *a: None)
    assert seen == {"repo_id": "lmms-eval/Video-MME", "repo_type": "dataset", "revision": "abc",
                    "local_dir": str(tmp_path / "d"), "allow_patterns": ["x/*"], "token": None}

    def failing(**kw):
        raise OSError("Connection refused\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(common.DataError, match=r"download of a/b failed \(OSError: Connection refused\); check the network"):
        common.fetch("a/b", str(tmp_path / "e"), log=lambda *a: None)


def test_env_mirror_and_script(hub, tmp_path):
    env = dict(os.environ, PRUNEVID_HUB_MIRROR=hub, OMP_NUM_THREADS="1")
    root = tmp_path / "DATAS"
    p = subprocess.run([sys.executable, os.path.join(REPO, "data_scripts", "egoschema.py"), "--root", str(root),
                        "--no-count-check"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "copied from the hub mirror" in p.stdout and (root / "ego_schema" / "data_report.json").exists()
