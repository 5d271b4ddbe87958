"""Training-only targets read off the generator's ground truth: per-patch and per-video-token labels, the tokens
that hold each question's answer (read-out) and each object's first-frame tokens (tracking)."""
from __future__ import annotations

import numpy as np
import torch

from ... import synthetic as S


PATCH = 8
GRID = S.FRAME_SIZE // PATCH
N_AUX = (1 + len(S.COLOR_NAMES), 1 + len(S.SHAPES), len(S.SCENE_NAMES))


def patch_labels(video: S.Video) -> torch.Tensor:
    """(T, GRID*GRID, 3) long: colour (0 = none), shape (0 = none) and scene of every 8 px patch, from the
    tracks painted in render order; an object labels a patch it covers at least a quarter of."""
    T, Z = S.NUM_FRAMES, S.FRAME_SIZE
    owner = np.zeros((T, Z, Z), np.int8)
    for k, tr in enumerate(video.tracks, start=1):
        m = S.shape_mask(tr.shape, tr.size)
        for t in np.flatnonzero(tr.visible):
            x0 = int(round(tr.x[t] - tr.size / 2.0))
            y0 = int(round(tr.y[t] - tr.size / 2.0))
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + tr.size, Z), min(y0 + tr.size, Z)
            if xa < xb and ya < yb:
                owner[t, ya:yb, xa:xb][m[ya - y0:yb - y0, xa - x0:xb - x0]] = k
    blocks = owner.reshape(T, GRID, PATCH, GRID, PATCH).transpose(0, 1, 3, 2, 4).reshape(T, GRID * GRID, -1)
    out = np.zeros((T, GRID * GRID, 3), np.int64)
    best = np.zeros((T, GRID * GRID))
    for k, tr in enumerate(video.tracks, start=1):
        frac = (blocks == k).mean(-1)
        win = (frac >= 0.25) & (frac > best)
        best = np.where(win, frac, best)
        col = np.array([S.COLOR_NAMES.index(c) + 1 for c in tr.color])[:, None]
        out[..., 0] = np.where(win, col, out[..., 0])
        out[..., 1] = np.where(win, S.SHAPES.index(tr.shape) + 1, out[..., 1])
    out[..., 2] = np.array([S.SCENE_NAMES.index(s) for s in video.scenes])[:, None]
    return torch.from_numpy(out)


CELL = 2 * PATCH                      # LLaVA-OneVision pools 2 x 2 patches into one video token: 16 px cells
CGRID = S.FRAME_SIZE // CELL
# Per-video-token targets for the language model's hidden states (training only), every one causal: it depends
# only on the frames up to the token's own, which is all a video token can attend to.
#   colour now, shape, motion so far (static/left/right/up/down), colour changed so far, first colour,
#   appeared latest so far, number of objects seen so far, first scene, scene changed so far
N_LM_AUX = (1 + len(S.COLOR_NAMES), 1 + len(S.SHAPES), 5, 2, len(S.COLOR_NAMES), 2, 6, len(S.SCENE_NAMES), 2)
LM_AUX_IGNORE = -100
LM_AUX_MOTION = 2                     # index of "motion so far" among the targets (``--motion-weight``)


def cell_fractions(video: S.Video, sub: np.ndarray) -> np.ndarray:
    """(len(sub), CGRID**2, n_tracks) float: the fraction of each 16 px cell (one video token) that each object
    covers in frames ``sub``, objects painted in render order."""
    Z = S.FRAME_SIZE
    nT, nC = len(sub), CGRID * CGRID
    owner = np.zeros((nT, Z, Z), np.int8)
    for k, tr in enumerate(video.tracks, start=1):
        m = S.shape_mask(tr.shape, tr.size)
        for j, t in enumerate(sub):
            if not tr.visible[t]:
                continue
            x0 = int(round(tr.x[t] - tr.size / 2.0))
            y0 = int(round(tr.y[t] - tr.size / 2.0))
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + tr.size, Z), min(y0 + tr.size, Z)
            if xa < xb and ya < yb:
                owner[j, ya:yb, xa:xb][m[ya - y0:yb - y0, xa - x0:xb - x0]] = k
    blocks = owner.reshape(nT, CGRID, CELL, CGRID, CELL).transpose(0, 1, 3, 2, 4).reshape(nT, nC, -1)
    return np.stack([(blocks == k).mean(-1) for k in range(1, len(video.tracks) + 1)], -1) \
        if video.tracks else np.zeros((nT, nC, 0))


def lm_token_labels(video: S.Video, sub: np.ndarray, frac: np.ndarray = None) -> torch.Tensor:
    """(len(sub) * CGRID**2 + 1, len(N_LM_AUX)) long targets of the video tokens (frames ``sub``, 7 x 7 cells,
    then the newline token), ``LM_AUX_IGNORE`` where a target is undefined (object targets on background cells).
    "So far" means over the frames in ``sub`` up to the token's frame. ``frac``: ``cell_fractions(video, sub)``
    if already computed."""
    nT, nC = len(sub), CGRID * CGRID
    frac = cell_fractions(video, sub) if frac is None else frac
    lab = np.full((nT * nC + 1, len(N_LM_AUX)), LM_AUX_IGNORE, np.int64)
    scenes = [video.scenes[t] for t in sub]
    seen = np.zeros(len(video.tracks), bool)
    first_seen = np.full(len(video.tracks), -1)
    for j, t in enumerate(sub):
        for k, tr in enumerate(video.tracks):
            if tr.visible[t] and not seen[k]:
                seen[k], first_seen[k] = True, j
        rows = slice(j * nC, (j + 1) * nC)
        frame_lab = lab[rows]
        frame_lab[:, 0] = 0
        frame_lab[:, 1] = 0
        frame_lab[:, 6] = min(int(seen.sum()), 5)
        frame_lab[:, 7] = S.SCENE_NAMES.index(scenes[0])
        frame_lab[:, 8] = int(scenes[j] != scenes[0])
        if frac.shape[-1]:
            best = frac[j].argmax(-1)
            on = frac[j].max(-1) >= 0.2
            latest = first_seen[seen].max() if seen.any() else -1
            for k, tr in enumerate(video.tracks):
                cells = on & (best == k)
                if not cells.any():
                    continue
                vis = [s for s in sub[:j + 1] if tr.visible[s]]
                dx, dy = tr.x[t] - tr.x[vis[0]], tr.y[t] - tr.y[vis[0]]
                if max(abs(dx), abs(dy)) < 2:
                    motion = 0
                elif abs(dx) >= abs(dy):
                    motion = 2 if dx > 0 else 1                  # right / left
                else:
                    motion = 4 if dy > 0 else 3                  # down / up
                first = tr.color[vis[0]]
                frame_lab[cells, 0] = S.COLOR_NAMES.index(tr.color[t]) + 1
                frame_lab[cells, 1] = S.SHAPES.index(tr.shape) + 1
                frame_lab[cells, 2] = motion
                frame_lab[cells, 3] = int(tr.color[t] != first)
                frame_lab[cells, 4] = S.COLOR_NAMES.index(first)
                frame_lab[cells, 5] = int(first_seen[k] == latest and (first_seen[seen] < latest).any())
    lab[-1, 6:] = lab[-2, 6:]                  # the newline token sees the whole video: video-level targets
    return torch.from_numpy(lab)


SINK = -1          # ground_tokens' mark for "no token holds it": the first token of the sequence


def ground_tokens(video: S.Video, q: dict, sub: np.ndarray, frac: np.ndarray = None) -> list:
    """Indices (into the video-token run: frame-major 7 x 7 cells of frames ``sub``, then the newline token) of
    the tokens that hold the answer to question ``q`` about ``video``, by the labels ``lm_token_labels`` puts
    there: the named object's cells (in the frames showing the asked-for colour, or its last frame for its
    direction), the whole last frame for the scene change, the newline token for the count; ``[SINK]`` for an
    absent object (attend to the sequence's first token: finding nothing must look different from finding a
    near miss of the same colour or shape). Empty when the object is not visible in ``sub``. ``frac``:
    ``cell_fractions(video, sub)`` if already computed."""
    nT, nC = len(sub), CGRID * CGRID
    frac = cell_fractions(video, sub) if frac is None else frac
    own = (frac.max(-1) >= 0.2)[..., None] & (frac == frac.max(-1, keepdims=True)) if frac.shape[-1] else None

    def cells(tr, frames=None):
        k = next(i for i, t in enumerate(video.tracks) if t is tr)
        js = [j for j in range(nT) if own[j, :, k].any() and (frames is None or j in frames)]
        return [j * nC + c for j in js for c in np.flatnonzero(own[j, :, k])]

    def colour_frames(tr, colour):
        return [j for j, t in enumerate(sub) if tr.visible[t] and tr.color[t] == colour]

    text, tracks = q["question"], video.tracks
    if text.startswith("How many objects"):
        return [nT * nC]
    if text.startswith("How does the scene change"):
        return list(range((nT - 1) * nC, nT * nC))
    colour, shape = question_object(q)
    if text.startswith("Which direction does the "):
        tr = next(t for t in tracks if t.name == f"{S.COLOR_NAMES[colour]} {S.SHAPES[shape]}")
        c = cells(tr)
        last = max((i // nC for i in c), default=-1)
        return [i for i in c if i // nC == last]
    if text.startswith("What colour is the moving object"):
        tr = next(t for t in tracks if t.moving)
        return cells(tr)
    if text.startswith("What colour is the object that appears "):
        pick = min if text.endswith("first?") else max
        tr = pick(tracks, key=lambda t: t.first_frame)
        return cells(tr, colour_frames(tr, tr.first_color))
    if text.startswith("What colour does the "):
        tr = next(t for t in tracks if t.shape == S.SHAPES[shape] and t.first_color != t.last_color)
        return cells(tr, colour_frames(tr, tr.last_color))
    if text.startswith("Is there a "):
        if q["answer"] == "no":
            return [SINK]
        out = []
        for tr in tracks:
            if tr.shape == S.SHAPES[shape]:
                out += cells(tr, colour_frames(tr, S.COLOR_NAMES[colour]))
        return out
    raise ValueError(f"no grounding rule for question {text!r}")


def track_tokens(video: S.Video, sub: np.ndarray, frac: np.ndarray = None) -> list:
    """[(query index, [target indices], (row, column) of the target cells' centre)] into the video-token run
    (frame-major 7 x 7 cells of frames ``sub``): every cell an object holds in a frame after the first frame of
    ``sub`` that shows it, paired with that object's cells in that first frame, where "motion so far" (the label of
    ``lm_token_labels``) starts. The centre (rounded mean cell row and column) is what the track probe reads.
    ``frac``: ``cell_fractions(video, sub)`` if already computed."""
    nT, nC = len(sub), CGRID * CGRID
    frac = cell_fractions(video, sub) if frac is None else frac
    if not frac.shape[-1]:
        return []
    own = (frac.max(-1) >= 0.2)[..., None] & (frac == frac.max(-1, keepdims=True))      # (nT, nC, objects)
    out = []
    for k in range(own.shape[-1]):
        frames = [j for j in range(nT) if own[j, :, k].any()]
        if len(frames) < 2:
            continue
        first = np.flatnonzero(own[frames[0], :, k])
        targets = [frames[0] * nC + int(c) for c in first]
        centre = (int(round(float(np.mean(first // CGRID)))), int(round(float(np.mean(first % CGRID)))))
        out += [(j * nC + int(c), targets, centre) for j in frames[1:] for c in np.flatnonzero(own[j, :, k])]
    return out


def question_object(q: dict) -> tuple:
    """(colour index, shape index) of the object question ``q`` names, ``LM_AUX_IGNORE`` for what it does not name
    (existence and direction name both, the colour change only the shape, the other tasks no object)."""
    text = q["question"]
    colour = shape = LM_AUX_IGNORE
    if text.startswith("Is there a "):
        c, s = text[len("Is there a "):-len(" in the video?")].split(" ")
        colour, shape = S.COLOR_NAMES.index(c), S.SHAPES.index(s)
    elif text.startswith("Which direction does the "):
        c, s = text[len("Which direction does the "):-len(" move?")].split(" ")
        colour, shape = S.COLOR_NAMES.index(c), S.SHAPES.index(s)
    elif text.startswith("What colour does the "):
        shape = S.SHAPES.index(text[len("What colour does the "):-len(" turn into?")])
    return colour, shape
