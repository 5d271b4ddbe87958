"""Kept share of PruMerge+ (upstream's adaptive stride, the kit's default) on the LLaVA-OneVision grid
(27x27 SigLIP patches, bilinear 2x pooling -> 14x14 = 196 tokens per frame): the measured rows of
docs/measurement.md. Run: `.venv/bin/python scripts/measure_prumerge_plus.py` (CPU, about 10 s)."""
import math, sys, time
import numpy as np
import torch
import torch.nn.functional as F

from prunevid import models, synthetic, video
from prunevid.methods.base import VideoContext
from prunevid.methods.prumerge import PruMergePlusConfig, PruMergePlusMethod
from prunevid.models.video_patch import method_probe
from prunevid.models.tiny import build_tiny_llava_onevision


def pool(x, side):                          # (F, side*side, d) -> (F, ceil(side/2)^2, d), as apply_pooling
    g = x.reshape(x.shape[0], side, side, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=[math.ceil(side / 2)] * 2, mode="bilinear")
    return g.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[-1])


def measure(model, pix, interpolate):
    method = PruMergePlusMethod(PruMergePlusConfig())
    tower = model.model.vision_tower
    probe = method_probe(tower, model.config.vision_feature_layer, method)
    try:
        with torch.no_grad():
            out = tower(pix, output_hidden_states=True, interpolate_pos_encoding=interpolate)
    finally:
        probe.remove()
    side = int(round(math.sqrt(probe.importance.shape[1])))
    assert side == 27, side
    with torch.no_grad():
        feats = pool(model.model.multi_modal_projector(out.hidden_states[model.config.vision_feature_layer]), side)
    imp = pool(probe.importance[..., None], side).squeeze(-1)
    keys = pool(probe.keys, side)
    red = method.reduce(VideoContext(frames=feats, grid=(14, 14), importance=imp, keys=keys))
    return red.info["kept_per_frame"], red.info["outlier_ratio_per_frame"]


def report(name, kept, ratios, per_video):
    kept = np.array(kept); P = 196
    print(f"{name}: frames {kept.size}, kept/frame mean {kept.mean():.1f} (min {kept.min()}, max {kept.max()}), "
          f"share {kept.mean() / P:.3f}, with summary token {(kept.mean() + 1) / P:.3f}; outlier ratio mean "
          f"{np.mean(ratios):.4f}; PruMerge (outliers only) share {np.mean([int(P * x) for x in ratios]) / P:.3f}; "
          f"per-video shares {[round(float(v), 3) for v in per_video]}")


t0 = time.time()
bikes = video.load_video(video.sample_clip("bikes"), 16)
# (a) the tiny random model at the real OV geometry (384 px, patch 14)
tiny, _ = build_tiny_llava_onevision(image_size=384, patch_size=14)
pix = video.preprocess_frames(bikes, 384)
k, r = measure(tiny, pix, False)
report("tiny random SigLIP 384/14, bikes 16 frames", k, r, [np.mean(k) / 196])
# (b) the trained demo model, its SigLIP run at 216 px (27x27 patches of 8 px, interpolated position embeddings)
demo = models.load("demo")
mean, std = demo.preprocessing.mean, demo.preprocessing.std
allk, allr, per = [], [], []
clips = [("bikes", bikes)] + [(t, torch.from_numpy(s.frames)) for t, _, s in
                              synthetic.split_items(synthetic.SPLIT_SEEDS["test"], 1)]
for name, frames in clips:
    k, r = measure(demo.model, video.preprocess_frames(frames, 216, mean, std), True)
    allk += k; allr += r; per.append(np.mean(k) / 196)
    print(f"  demo, {name}: share {np.mean(k) / 196:.3f}")
report("demo model (trained SigLIP at 216 px), bikes + 1 test video per task", allk, allr, per)
print(f"{time.time() - t0:.1f} s")
