import os

import numpy as np
import pytest
import torch

from prunevid import models, video


def _write_clip(path, frames=12, size=32, fps=10):
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            arr = np.full((size, size, 3), i * 20 % 255, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def test_segment_midpoints_follow_the_official_formula():
    # 100 frames (max_frame 99), no bound: seg = 99/16, idx = int(seg/2 + round(seg*i))
    idx = video.segment_midpoint_indices(16, 99, 30.0)
    seg = 99 / 16
    assert idx == [int(seg / 2 + np.round(seg * i)) for i in range(16)]
    assert idx[0] == 3 and idx[-1] == 96
    # round half to even: seg = 2.5 -> 1.25 + round(2.5) = 1.25 + 2 -> 3 (half-up would give 4)
    assert video.segment_midpoint_indices(4, 10, 1.0) == [1, 3, 6, 9]
    # bound in seconds, fps 10: [2 s, 4 s] -> frames 20..40
    assert video.segment_midpoint_indices(4, 99, 10.0, bound=(2.0, 4.0)) == [22, 27, 32, 37]
    # frame folders are 1-based and max_frame is the file count
    assert video.segment_midpoint_indices(2, 8, 3.0, first_idx=1)[0] >= 1


def test_linspace_like_lmms_eval():
    assert video.linspace_indices(4, 10) == [0, 3, 6, 9]


def test_load_real_sample_clip():
    frames = video.load_video(video.sample_clip("bikes"), 8)
    assert frames.shape == (8, 272, 640, 3) and frames.dtype == torch.uint8


def test_load_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        video.load_video(str(tmp_path / "nope.mp4"), 4)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(video.VideoError, match="cannot decode"):
        video.load_video(str(bad), 4)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(video.VideoError, match="empty"):
        video.load_video(str(empty), 4)
    short = _write_clip(tmp_path / "short.mp4", frames=5)
    with pytest.warns(video.ShortClipWarning, match="fewer than the 8"):   # upstream repeats indices
        assert video.load_video(short, 8).shape[0] == 8
    assert video.load_video(short, 4).shape[0] == 4


def test_frame_folder(tmp_path):
    from PIL import Image
    for i in range(1, 13):
        Image.fromarray(np.full((16, 16, 3), i * 10, dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    frames = video.load_video(str(tmp_path), 4)
    assert frames.shape == (4, 16, 16, 3)
    idx = video.segment_midpoint_indices(4, 12, 3.0, first_idx=1)
    assert [int(round(f[0, 0, 0].item() / 10)) for f in frames] == idx
    (tmp_path / "empty").mkdir()
    with pytest.raises(video.VideoError, match="no .jpg"):
        video.load_frame_folder(str(tmp_path / "empty"), 4)


def test_preprocess_resizes_and_normalises():
    frames = torch.full((2, 30, 50, 3), 255, dtype=torch.uint8)
    x = video.preprocess_frames(frames, 16, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    with pytest.raises(ValueError, match="shape"):
        video.preprocess_frames(torch.zeros(2, 3, 16, 16), 16)


def test_build_inputs_has_one_placeholder_per_feature():
    loaded = models.load("tiny")
    frames = torch.randint(0, 255, (4, 40, 60, 3), dtype=torch.uint8)
    inp = video.build_inputs(loaded, frames, "Question: q?", answer_prefix="Best option:(")
    vid = loaded.model.config.video_token_id
    assert int((inp["input_ids"] == vid).sum()) == 4 * 49 + 1
    assert inp["pixel_values_videos"].shape == (1, 4, 3, 112, 112)
    text = loaded.tokenizer.decode(inp["input_ids"][0])
    assert text.startswith("<|im_start|>user\n<video>") and text.endswith("<|im_start|>assistant\nBest option:(")


def test_checkpoint_preprocessing_is_read_from_its_files(tmp_path):
    import json
    (tmp_path / "video_processor").mkdir()
    (tmp_path / "video_processor" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 384, "width": 384}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    cfg = models.load("tiny").model.config
    pre = models.preprocessing_from_dir(str(tmp_path), cfg)
    assert pre.size == 384 and pre.mean == (0.5, 0.5, 0.5)


def test_local_checkpoint_roundtrip(tmp_path):
    loaded = models.load("tiny")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = models.load(str(tmp_path))
    assert again.spec.name == "llava_onevision"
    for (n, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load(str(tmp_path / "missing"))
