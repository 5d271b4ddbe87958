"""What PruneVid's stage 1 does to the objects of the synthetic benchmark, on the demo model's own features.

The generator knows where every object is, so each video token (frame, 16 px cell) can be labelled with the
object covering at least a quarter of it. For several stage-1 settings this prints the share of tokens kept and
the **purity** of the object tokens: the mean share of an object token's output token (its merged group) that
belongs to the same object (1.0: objects are never averaged with background or with each other). It also prints
how similar the features are: the cosine of an object token with the background token at the same place in
another frame, and of two background tokens there, and the static-similarity score of stage 1 (mean pairwise
cosine over a segment, the quantity compared with tau) at places an object visits and at places it does not.

    python data_scripts/stage1_object_tokens.py                 # validation split, 10 items per task (~1 min)
    python data_scripts/stage1_object_tokens.py --split synthetic --per-task 15

Used by the README's "What the study finds" section (finding 3).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import benchmarks, merge, models, synthetic as S, video          # noqa: E402
from prunevid.harness.runner import default_data_root                          # noqa: E402
from prunevid.synthetic.training.labels import cell_fractions                  # noqa: E402

SETTINGS = {
    "paper (tau 0.8, cluster_ratio 0.5)": dict(tau=0.8, cluster_ratio=0.5),
    "no static merge (tau 1.0)": dict(tau=1.0, cluster_ratio=0.5),
    "no spatial clustering (cluster_ratio 1.0)": dict(tau=0.8, cluster_ratio=1.0),
    "tau 0.95, cluster_ratio 1.0": dict(tau=0.95, cluster_ratio=1.0),
    "tau 0.99, cluster_ratio 1.0": dict(tau=0.99, cluster_ratio=1.0),
}


def object_owner(sample: S.Sample, n_frames: int) -> torch.Tensor:
    """(T, P) long: 1 + index of the object covering >= 1/4 of each video token's cell, 0 for background."""
    frac = cell_fractions(sample.video, np.arange(n_frames))                   # (T, P, n_objects)
    if frac.shape[-1] == 0:
        return torch.zeros(frac.shape[:2], dtype=torch.long)
    return torch.from_numpy(np.where(frac.max(-1) >= 0.25, frac.argmax(-1) + 1, 0))


def purity(assignment: torch.Tensor, owner: torch.Tensor) -> list:
    """Per object token: the share of its output token's members owned by the same object."""
    out = []
    for t, c in (owner > 0).nonzero().tolist():
        members = assignment == assignment[t, c]
        out.append(float((owner[members] == owner[t, c]).float().mean()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="synthetic-val", choices=["synthetic-val", "synthetic"])
    ap.add_argument("--per-task", type=int, default=10)
    ap.add_argument("--model", default="demo")
    args = ap.parse_args(argv)

    loaded = models.load(args.model)
    bench = benchmarks.get(args.split)
    root = default_data_root()
    bench.check_data(root)
    items = bench.items(root, args.per_task * len(S.TASKS))
    seed = S.SPLIT_SEEDS["val" if args.split == "synthetic-val" else "test"]
    per_frame = loaded.spec.module.tokens_per_frame(loaded.model.config)
    kept = {k: [] for k in SETTINGS}
    pure = {k: [] for k in SETTINGS}
    cos = {"object vs background, same place": [], "background vs background, same place": [],
           "static score, places an object visits": [], "static score, other places": []}
    for it in items:
        task, index = it.id.split("/")
        sample = S.make_item(task, S.item_rng(seed, task, int(index)))
        frames = video.load_video(it.video, S.NUM_FRAMES)
        inputs = video.build_inputs(loaded, frames, it.question)
        with torch.no_grad():
            feats = loaded.model.model.get_video_features(inputs["pixel_values_videos"],
                                                          return_dict=True).pooler_output[0]
        tokens = feats[:-1].view(S.NUM_FRAMES, per_frame, -1).float()          # (T, P, C), newline dropped
        owner = object_owner(sample, S.NUM_FRAMES)
        unit = F.normalize(tokens, dim=-1)
        for c in range(per_frame):
            on, off = (owner[:, c] > 0).nonzero().squeeze(1), (owner[:, c] == 0).nonzero().squeeze(1)
            if len(on) and len(off) > 1:
                cos["object vs background, same place"].append(float((unit[on, c] @ unit[off, c].T).mean()))
                cos["background vs background, same place"].append(
                    float((unit[off[:-1], c] * unit[off[1:], c]).sum(-1).mean()))
        for name, kw in SETTINGS.items():
            res = merge.merge_video_tokens(tokens, temporal_segment_ratio=0.25,
                                           generator=torch.Generator().manual_seed(0), **kw)
            kept[name].append(res.num_tokens / tokens.shape[0] / tokens.shape[1])
            pure[name] += purity(res.assignment, owner)
            if name.startswith("paper"):
                start = 0
                for w in res.window_sizes:
                    if w > 1:
                        score = merge.static_similarity(tokens[start:start + w])
                        visited = (owner[start:start + w] > 0).any(0)
                        cos["static score, places an object visits"] += score[visited].tolist()
                        cos["static score, other places"] += score[~visited].tolist()
                    start += w
    print(f"{args.split}: {len(items)} items, model {args.model}")
    print(f"{'cosine':42s} {'n':>6s} {'q05':>6s} {'median':>6s} {'q95':>6s}")
    for name, vals in cos.items():
        v = np.asarray(vals)
        print(f"{name:42s} {len(v):6d} {np.quantile(v, .05):6.3f} {np.median(v):6.3f} {np.quantile(v, .95):6.3f}")
    print(f"\n{'stage-1 setting':42s} {'kept':>6s} {'object-token purity':>20s}")
    for name in SETTINGS:
        print(f"{name:42s} {np.mean(kept[name]):6.3f} {np.mean(pure[name]):20.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
