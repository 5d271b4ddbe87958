#!/usr/bin/env python
"""Train the demo video LLM (a plain LlavaOnevisionForConditionalGeneration) on the synthetic benchmark, on CPU.

    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # one sitting
    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # continues from the checkpoint
    python data_scripts/train_demo_model.py --out runs/demo_model --eval-only           # evaluate the checkpoint

Training data is drawn fresh every step from ``prunevid.synthetic`` (in memory, no mp4) with a random stream
``default_rng([seed, step])``, so a run is reproducible from its seed and a resumed run sees exactly the batches
an uninterrupted one would. Every ``--ckpt-every`` steps the model, the auxiliary head, the optimizer, the
torch RNG state and the step are saved to ``<out>/checkpoint.pt``; rerunning the same command continues from
there. At the end of a sitting the model is also written with ``save_pretrained`` (safetensors) plus the
tokenizer to ``<out>/model``, which ``prunevid.models.load(<out>/model)`` loads.

Prompts are rendered exactly as the official MVBench protocol does, in the LLaVA-OneVision chat template:
the VideoChat2 system prompt as a system turn, ``Question: ...\\nOptions:\\n(A) ...\\nOnly give the best option.``
as the user text after the video, and the assistant answer prefix ``Best option:(``; the target is
``B) red<|im_end|>``. Recipes for more signal per CPU second (all switchable):

- several questions about the same video in one sequence (one vision pass, many answers): the first turn is the
  evaluation prompt, later turns ask the other tasks' questions that are well defined on that video;
- a dense caption turn ("Describe the video.") listing every object, its motion, colour change and the scenes;
- an auxiliary per-patch loss on the projected vision features (colour, shape and scene of every 8 px patch),
  through a linear head used in training only: the saved model stays a plain LLaVA-OneVision;
- a per-video-token loss on the hidden states of one LLM layer (``--lm-aux-weight``): causal targets per token
  (the object under it, its motion and colour change so far, objects seen so far, the scenes), so that the later
  layers can read what the questions ask about;
- an answer-content loss (``--answer-aux-weight``) at every position that predicts an option letter, through one
  head shared with the text-only look-up sequences, so that the content is there before the last layer binds it
  to a letter;
- text-only option look-up sequences (``--lookup``, ``--lookup-pretrain``) that teach that binding cheaply;
- binding losses at the same positions (``--bind-weight``, ``--probe-weight``, ``--flag-weight``): one attention
  head of the last layer is told to look at the gold option's tokens, and probes on the option tokens ask for the
  option's letter and for whether it is the answer;
- a read-out loss (``--ground-weight``): one attention head of an earlier layer (``--ground-layer``) is told to
  look, from each letter position of a video question, at the video tokens that hold the answer (the asked-about
  object's cells, the last frame for the scene change, the newline token for the count), re-weighted per task with
  ``--ground-task-weight``, with a probe (``--ground-probe-weight``) that must read the named object's colour and
  shape at the letter position, where that head's query starts;
- a per-patch position loss (``--pos-weight``): each patch's row and column read linearly from the projector
  output, so that the features the LLM receives say where they are (motion needs it); ``--pos-ordinal-weight``
  asks for them as one direction per axis (a regression), so that a displacement is a linear difference;
- a tracking loss (``--track-weight``): one attention head (``--track-layer``, ``--track-head``) is told to look,
  from every video token an object holds after its first frame, at that object's tokens in its first frame, with
  a probe (``--track-probe-weight``) that must read where those were from the layer's output; ``--motion-weight``
  weighs "motion so far" among the per-video-token targets (moving direction compares where an object is with
  where it was);
- a curriculum: fewer objects, frames (``--frames-schedule``) and a fixed option order first, then the full task
  distribution, shuffled; ``--task-mix`` re-weights which task's videos are drawn (uniform by default);
- zero-initialised residual branches, bf16 autocast where the CPU has native bf16 (``--no-bf16`` otherwise),
  ``--device cuda`` on a GPU, AdamW with warmup and cosine decay.

All heads used by these losses are training-only: the saved model is a plain LLaVA-OneVision.

Evaluation (every ``--eval-every`` steps) runs the official single-question prompt on a held-out set generated
from the ``val`` seed and scores the letter with the highest logit among the item's options, printing
per-task accuracy and chance.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import synthetic as S  # noqa: E402
from prunevid.synthetic import demo_model as D  # noqa: E402
from prunevid.video import preprocess_frames  # noqa: E402
from transformers.models.qwen2.modeling_qwen2 import rotate_half  # noqa: E402

TOKENS_PER_FRAME = 49
N_VIDEO = S.NUM_FRAMES * TOKENS_PER_FRAME + 1
CAPTION_REQUEST = "Describe the video."


# ----------------------------------------------------------------------------------------------------------
# Sequences
# ----------------------------------------------------------------------------------------------------------

class Encoder:
    """Token ids and loss masks for the official prompt and for multi-turn training sequences."""

    def __init__(self, tok):
        self.tok = tok
        self.video_id = tok.convert_tokens_to_ids("<video>")
        self.letter_ids = [tok.convert_tokens_to_ids(c) for c in S.OPTION_LETTERS[:5]]
        self._cache = {}

    def ids(self, text: str) -> list:
        if text not in self._cache:
            if len(self._cache) > 50000:
                self._cache.clear()
            self._cache[text] = self.tok(text, add_special_tokens=False).input_ids
        return self._cache[text]

    def first_turn(self, question: str, candidates: list, n_video: int = N_VIDEO) -> list:
        """The evaluation prompt (system, user with video and question block, ``Best option:(``)."""
        ids = self.ids(D.render_prompt(self.tok, question, candidates, num_video_tokens=1))
        i = ids.index(self.video_id)
        return ids[:i] + [self.video_id] * n_video + ids[i + 1:]

    def answer(self, q: dict) -> list:
        letter = S.OPTION_LETTERS[q["candidates"].index(q["answer"])]
        return self.ids(f"{letter}) {q['answer']}<|im_end|>")

    def training_sequence(self, questions: list, caption: str = "", caption_weight: float = 0.5,
                          n_video: int = N_VIDEO, marks: list = None, letter_weight: float = 1.0):
        """(ids, weights): the first question in the evaluation format, then one turn per further question and
        an optional caption turn; weights are 1 on answer tokens, ``caption_weight`` on caption tokens, 0
        elsewhere (the weight at position i belongs to predicting token i)."""
        nl = self.ids("\n")
        ids = list(self.first_turn(questions[0]["question"], questions[0]["candidates"], n_video))
        w = [0.0] * len(ids)
        for k, q in enumerate(questions):
            if k > 0:
                p = self.ids("<|im_start|>user\n" + S.synthetic_question(q["question"], q["candidates"]) +
                             "<|im_end|>\n<|im_start|>assistant\n" + S.SYNTHETIC_ANSWER_PREFIX)
                ids += p
                w += [0.0] * len(p)
            a = self.answer(q)
            if marks is not None:          # (position predicting the letter, answer class) for the answer head
                marks.append((len(ids) - 1, ANSWER_CLASSES.index(q["answer"])))
            ids += a + nl
            w += [letter_weight] + [1.0] * (len(a) - 1) + [0.0] * len(nl)
        if caption:
            p = self.ids(f"<|im_start|>user\n{CAPTION_REQUEST}<|im_end|>\n<|im_start|>assistant\n")
            c = self.ids(caption + "<|im_end|>")
            ids += p + c + nl
            w += [0.0] * len(p) + [caption_weight] * len(c) + [0.0] * len(nl)
        return ids, w


def pad_batch(seqs, pad_id):
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def pixels(frames_list) -> torch.Tensor:
    """Frames (T, H, W, 3) uint8 arrays -> (B, T, 3, S, S) float, the kit's preprocessing (mean/std 0.5)."""
    return torch.stack([preprocess_frames(torch.from_numpy(f), S.FRAME_SIZE) for f in frames_list])


# ----------------------------------------------------------------------------------------------------------
# Auxiliary per-patch labels (training only)
# ----------------------------------------------------------------------------------------------------------

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


class LayerCapture:
    """Forward hook on one decoder layer of the language model: keeps its output hidden states."""

    def __init__(self, model, layer: int):
        self.out = None
        self.handle = model.model.language_model.layers[layer].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output[0] if isinstance(output, tuple) else output


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------

def curriculum(step: int, args) -> tuple:
    """(difficulty, probability of shuffled options) at ``step``."""
    c = max(args.curriculum_steps, 1)
    difficulty = min(1.0, args.start_difficulty + (1 - args.start_difficulty) * step / c)
    p_shuffle = float(np.clip((step - args.shuffle_from * c) / max((1 - args.shuffle_from) * c, 1), 0, 1))
    return difficulty, p_shuffle


def frames_at(step: int, args) -> int:
    """Frames per training video at ``step`` under ``--frames-schedule`` ("4:300,8:600": 4 frames before step
    300, 8 before 600, then all 16), a curriculum that shortens the visual sequence early in training."""
    for part in filter(None, (args.frames_schedule or "").split(",")):
        n, until = (int(v) for v in part.split(":"))
        if step < until:
            return n
    return S.NUM_FRAMES


def frame_subset(n: int) -> np.ndarray:
    """Evenly spread frame indices, always including the first and the last."""
    return np.round(np.linspace(0, S.NUM_FRAMES - 1, n)).astype(int)


def letter_weight_at(step: int, args) -> float:
    return args.letter_weight if step >= args.letter_weight_from else 1.0


def make_batch(step: int, args, enc: Encoder):
    rng = np.random.default_rng([args.seed, step])
    vstep = max(step - args.lookup_pretrain, 0)        # the video curriculum starts after the look-up phase
    difficulty, p_shuffle = curriculum(vstep, args)
    sub = frame_subset(frames_at(vstep, args))
    n_video = len(sub) * TOKENS_PER_FRAME + 1
    seqs, weights, frames, labels, lm_labels, answers, ground, track = [], [], [], [], [], [], [], []
    for _ in range(args.batch):
        task = None                                 # uniform, drawn by S.sample (older runs replay unchanged)
        if args.task_mix_weights:
            p = np.array([args.task_mix_weights.get(t, 1.0) for t in S.TASKS])
            task = S.TASKS[int(rng.choice(len(S.TASKS), p=p / p.sum()))]
        s = S.sample(rng, task, difficulty=difficulty, shuffle=bool(rng.random() < p_shuffle), extras=True)
        tq = [(s.task, s.item)]                    # (task, question) pairs
        extra = list(s.extra.items())
        rng.shuffle(extra)
        tq += extra[:max(args.questions_per_video - 1, 0)]
        order = rng.permutation(len(tq))            # any task may come first, in the evaluation position
        tq = [tq[i] for i in order]
        qs = [q for _, q in tq]
        marks = []
        ids, w = enc.training_sequence(qs, s.caption if args.caption_weight > 0 else "", args.caption_weight,
                                       n_video, marks, letter_weight_at(step, args))
        answers += [(len(seqs), p, c) for p, c in marks]
        # which object covers each video token: shared by the read-out targets and the per-video-token labels
        frac = (cell_fractions(s.video, sub)
                if (args.ground_weight > 0 or args.lm_aux_weight > 0 or args.track_weight > 0) else None)
        # (row, letter position, absolute positions of the answer's tokens, weight, (colour, shape) asked about)
        if args.ground_weight > 0:
            start = ids.index(enc.video_id)
            for (p, _), (task, q) in zip(marks, tq):
                g = ground_tokens(s.video, q, sub, frac)
                if g:
                    ground.append((len(seqs), p, [0 if i == SINK else start + i for i in g],
                                   args.ground_task_weights.get(task, 1.0), question_object(q)))
        if args.track_weight > 0:
            start = ids.index(enc.video_id)
            tt = track_tokens(s.video, sub, frac)
            if len(tt) > args.track_queries:       # a random subset bounds the cost (the stream stays seeded)
                tt = [tt[i] for i in sorted(rng.choice(len(tt), args.track_queries, replace=False))]
            if tt:
                track.append((len(seqs), [start + i for i, _, _ in tt], [[start + j for j in g] for _, g, _ in tt],
                              [c for _, _, c in tt]))
        seqs.append(ids)
        weights.append(w)
        frames.append(s.frames[sub])
        if args.aux_weight > 0:
            labels.append(patch_labels(s.video)[sub])
        if args.lm_aux_weight > 0:
            lm_labels.append(lm_token_labels(s.video, sub, frac))
    ids, mask = pad_batch(seqs, enc.tok.pad_token_id)
    wt = torch.zeros(ids.shape)
    for i, w in enumerate(weights):
        wt[i, :len(w)] = torch.tensor(w)
    aux = torch.stack(labels).flatten(0, 1) if labels else None      # (B*T, 196, 3)
    lm_aux = torch.stack(lm_labels) if lm_labels else None            # (B, n_video, len(N_LM_AUX))
    return (ids, mask, wt, pixels(frames), aux, lm_aux, torch.tensor(answers, dtype=torch.long).view(-1, 3),
            ground, track)


LOOKUP_POOLS = (S.COLOR_NAMES, S.DIRECTIONS, S.NUMBERS, S.YES_NO,
                tuple(f"From {a} to {b}" for a in S.SCENE_NAMES for b in S.SCENE_NAMES if a != b))


def make_lookup_batch(step: int, args, enc: Encoder, n: int = 0):
    """Text-only option look-up sequences ("Which option is red?" -> "B) red"): they teach the binding of an
    answer to its option letter, the step the video questions learn last, at a tiny fraction of their cost."""
    rng = np.random.default_rng([args.seed, step, 1])
    rows = []
    for _ in range(n or args.lookup):
        pool = LOOKUP_POOLS[int(rng.integers(len(LOOKUP_POOLS)))]
        n = int(rng.integers(2, min(5, len(pool)) + 1))
        cands = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
        q = {"question": f"Which option is {cands[0]}?", "candidates": [cands[i] for i in rng.permutation(n)],
             "answer": cands[0]}
        rows.append(("", q))
    return text_qa_batch(rows, step, args, enc)


def text_qa_batch(rows, step: int, args, enc: Encoder):
    """(ids, mask, weights, answers) of text-only one-turn questions, ``rows`` = [(context, question dict)]: the
    official question block (after the context line, if any), the answer prefix, then the target ``B) red``;
    ``answers`` rows are (sequence, position predicting the letter, answer class) for the answer head."""
    seqs, weights, answers = [], [], []
    for context, q in rows:
        p = enc.ids("<|im_start|>user\n" + (context + "\n" if context else "") +
                    S.synthetic_question(q["question"], q["candidates"]) +
                    "<|im_end|>\n<|im_start|>assistant\n" + S.SYNTHETIC_ANSWER_PREFIX)
        a = enc.answer(q)
        answers.append((len(seqs), len(p) - 1, ANSWER_CLASSES.index(q["answer"])))
        seqs.append(p + a)
        weights.append([0.0] * len(p) + [letter_weight_at(step, args)] + [1.0] * (len(a) - 1))
    ids, mask = pad_batch(seqs, enc.tok.pad_token_id)
    wt = torch.zeros(ids.shape)
    for i, w in enumerate(weights):
        wt[i, :len(w)] = torch.tensor(w)
    return ids, mask, wt, torch.tensor(answers, dtype=torch.long).view(-1, 3)


def make_indirect_batch(step: int, args, enc: Encoder, n: int = 0):
    """Text-only questions whose answer must be worked out before it is looked up: a few facts ("The square is
    red. The circle is blue."), a question about one of them, options that include the other facts' values. Unlike
    "Which option is red?", no word of the question names the answer, so matching question words against the
    options does not work; the model has to carry the answer to the letter position and look it up from there,
    which is what a video question needs."""
    rng = np.random.default_rng([args.seed, step, 2])
    rows = []
    for _ in range(n or args.indirect):
        k = int(rng.integers(2, 4))
        shapes = [S.SHAPES[i] for i in rng.permutation(len(S.SHAPES))[:k]]
        kind = int(rng.integers(3))
        pool = S.DIRECTIONS if kind == 1 else S.COLOR_NAMES
        values = [pool[i] for i in rng.permutation(len(pool))[:k]]
        if kind == 0:
            facts = [f"The {sh} is {v}." for sh, v in zip(shapes, values)]
            q = f"What colour is the {shapes[0]}?"
        elif kind == 1:
            facts = [f"The {sh} moves {v}." for sh, v in zip(shapes, values)]
            q = f"Which direction does the {shapes[0]} move?"
        else:
            facts = [f"The {sh} turns {v}." for sh, v in zip(shapes, values)]
            q = f"What colour does the {shapes[0]} turn into?"
        order = rng.permutation(k)
        context = " ".join(facts[i] for i in order)
        extra = [v for v in pool if v not in values]
        n_opt = min(len(pool), k + int(rng.integers(0, 2)))
        cands = values + extra[:n_opt - k]
        cands = [cands[i] for i in rng.permutation(len(cands))]
        rows.append((context, {"question": q, "candidates": cands, "answer": values[0]}))
    return text_qa_batch(rows, step, args, enc)


# Every answer string of the benchmark (and of the look-up sequences): the classes of the answer head.
ANSWER_CLASSES = tuple(dict.fromkeys(a for pool in LOOKUP_POOLS for a in pool))


def answer_loss(answer_head, answer_capture, answers, args):
    """CE of the answer head on the hidden state (output of ``--answer-aux-layer``) at each position that predicts
    an option letter: the content of the answer must be there before the last layers bind it to a letter. The
    look-up sequences use the same head, so their binding and the video questions' share one representation."""
    h = answer_capture.out
    answer_capture.out = None
    if answer_head is None or h is None or not len(answers):
        return None
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        z = answer_head(h[answers[:, 0], answers[:, 1]]).float()
    return F.cross_entropy(z, answers[:, 2])


def lookup_loss(model, batch, args, answer_head=None, answer_capture=None, bind=None, stats=None, prefix=""):
    ids, mask, wt, answers = batch
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    ce = ce.view(ids.shape[0], -1)
    w = wt[:, 1:]
    letter = (w > 0) & (ids[:, :-1] == args.paren_id)
    loss = (ce * w).sum() / w.sum().clamp(min=1)
    if answer_capture is not None:
        a = answer_loss(answer_head, answer_capture, answers, args)
        if a is not None:
            loss = loss + args.answer_aux_weight * a
    if bind is not None:
        loss = bind.add_to(loss, stats if stats is not None else {}, prefix, ids, answers, args)
    return loss, ce[letter].mean().item()


# ----------------------------------------------------------------------------------------------------------
# Binding: the last step of every answer, "the content I computed is option B" (training only)
# ----------------------------------------------------------------------------------------------------------

def option_spans(row: list, p: int, tokens: dict):
    """([positions of option j's content tokens], index of the gold option) of the question block answered at
    position ``p`` (the ``(`` that predicts the letter; the gold letter is ``row[p + 1]``): the options are the
    ``(X) content`` lines after the last ``Options`` token before ``p``. None if no block is found."""
    start = max((i for i in range(p) if row[i] == tokens["options"]), default=-1)
    if start < 0:
        return None
    spans, letters = [], tokens["letters"]
    i = start
    while i < p - 2:
        if row[i] == tokens["paren"] and row[i + 1] in letters and row[i + 2] == tokens["close"]:
            j = i + 3
            while j < p and row[j] != tokens["newline"]:
                j += 1
            spans.append((letters.index(row[i + 1]), list(range(i + 3, j))))
            i = j
        else:
            i += 1
    gold = letters.index(row[p + 1]) if row[p + 1] in letters else -1
    spans = [s for _, s in sorted(spans)]
    if gold < 0 or gold >= len(spans) or not all(spans):
        return None
    return spans, gold


def _rotate(x, cos, sin):
    """Rotary embedding of ``x`` (..., head_dim), as the model's attention applies it."""
    return x * cos + rotate_half(x) * sin


def head_keys(attn, h, cos, sin, head: int):
    """(L, head_dim) rotated keys of attention head ``head`` of ``attn`` for one row's layer input ``h`` (L, D)."""
    hd = attn.head_dim
    k = attn.k_proj(h).view(h.shape[0], -1, hd)[:, head // attn.num_key_value_groups]
    return _rotate(k, cos, sin)


def head_log_attention(attn, keys, h, cos, sin, head: int, p: int):
    """(p + 1,) log attention of head ``head`` from position ``p`` (its layer input ``h`` (L, D), rotary ``cos`` /
    ``sin`` (L, head_dim)) over positions 0..p: the causal softmax the layer itself computes."""
    q = attn.q_proj(h[p]).view(-1, attn.head_dim)[head]
    q = _rotate(q, cos[p], sin[p])
    return ((keys[:p + 1] @ q) * attn.scaling).float().log_softmax(0)


def option_tokens(tok) -> dict:
    """The token ids ``option_spans`` reads an option block with."""
    return {"options": tok.convert_tokens_to_ids("Options"), "paren": tok.convert_tokens_to_ids("("),
            "close": tok.convert_tokens_to_ids(")"), "newline": tok.convert_tokens_to_ids("\u010a"),
            "letters": [tok.convert_tokens_to_ids(c) for c in S.OPTION_LETTERS[:5]]}


class SupervisedHead:
    """One attention head of one LLM layer whose attention a training-only loss supervises: a forward pre-hook keeps
    the layer's input and rotary embedding, from which ``head_keys`` / ``head_log_attention`` recompute the head's
    real attention."""

    def __init__(self, model, layer: int, head: int):
        n_layers = model.config.text_config.num_hidden_layers
        self.attn = model.model.language_model.layers[layer % n_layers].self_attn
        self.head = head
        self.handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.h = self.pe = None

    def _hook(self, module, args, kwargs):
        self.h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.pe = kwargs["position_embeddings"]

    def take(self):
        """(layer input (B, L, D), cos, sin) of the last forward, then forgotten; (None, None, None) if none."""
        h, pe = self.h, self.pe
        self.h = self.pe = None
        return (None, None, None) if h is None else (h, *pe)

    @staticmethod
    def row_rotary(cos, sin, b: int):
        """The (L, head_dim) rotary tables of batch row ``b`` (the batch dimension may be 1)."""
        return cos[min(b, cos.shape[0] - 1)], sin[min(b, sin.shape[0] - 1)]


class Binding(SupervisedHead):
    """Three training-only losses that teach the binding directly, at every position that predicts an option letter:

    - attention supervision: one head (``--bind-head``) of one layer (``--bind-layer``, default the last) should put
      its attention from the letter position on the gold option's content tokens (-log of that attention mass,
      recomputed from the layer's own q/k projections and rotary embedding, so it is the real attention);
    - a letter probe: the hidden state entering that layer, at each option's content tokens, should say which
      letter the option has (what the head's value must carry to the letter position);
    - a gold-flag probe (``--flag-weight``): the same hidden states should say whether their option is the answer,
      so that the option tokens themselves work the answer out and the head only has to find the flagged one (a
      single direction for its keys, instead of matching every answer to every option word).
    """

    def __init__(self, model, tok, args):
        super().__init__(model, args.bind_layer, args.bind_head)
        hidden = model.config.text_config.hidden_size
        self.probe = torch.nn.Linear(hidden, len(S.OPTION_LETTERS[:5]))
        self.flag = torch.nn.Linear(hidden, 1)
        self.heads = torch.nn.ModuleList([self.probe, self.flag])
        self.tokens = option_tokens(tok)

    def loss(self, ids, answers):
        """(attention loss, letter-probe loss, flag-probe loss, attention mass on the gold option) over the marks ``answers`` (rows of
        (sequence, position predicting the letter, answer class))."""
        h, cos, sin = self.take()
        if h is None or not len(answers):
            return None
        a = self.attn
        rows = ids.tolist()
        att, probe_x, probe_y, flag_y, mass = [], [], [], [], []
        for b in sorted(set(answers[:, 0].tolist())):
            cb, sb = self.row_rotary(cos, sin, b)
            k_all = head_keys(a, h[b], cb, sb, self.head)
            for _, p, _ in answers[answers[:, 0] == b].tolist():
                found = option_spans(rows[b], p, self.tokens)
                if found is None:
                    continue
                spans, gold = found
                logp = head_log_attention(a, k_all, h[b], cb, sb, self.head, p)
                lg = logp[spans[gold]].logsumexp(0)
                att.append(-lg)
                mass.append(lg.exp().item())
                for j, s in enumerate(spans):
                    probe_x.append(h[b, s])
                    probe_y += [j] * len(s)
                    flag_y += [float(j == gold)] * len(s)
        if not att:
            return None
        x = torch.cat(probe_x)
        z = self.probe(x).float()
        f = self.flag(x).float().squeeze(-1)
        return (torch.stack(att).mean(), F.cross_entropy(z, torch.tensor(probe_y, device=z.device)),
                F.binary_cross_entropy_with_logits(f, torch.tensor(flag_y, device=f.device)), float(np.mean(mass)))

    def add_to(self, loss, stats, prefix, ids, answers, args):
        r = self.loss(ids, answers)
        if r is None:
            return loss
        la, lp, lf, m = r
        stats[prefix + "bind_mass"] = m
        stats[prefix + "probe"] = lp.item()
        if args.flag_weight > 0:
            stats[prefix + "flag"] = lf.item()
        return loss + args.bind_weight * la + args.probe_weight * lp + args.flag_weight * lf


class Grounding(SupervisedHead):
    """Training-only attention supervision of the video read-out: one head (``--ground-head``) of one layer
    (``--ground-layer``) should put its attention from each letter position of a video question on the video
    tokens that hold the answer (``ground_tokens``): -log of that attention mass, recomputed from the layer's own
    projections like ``Binding``'s. The labels of ``lm_token_labels`` put the answer in those tokens; this loss
    teaches the question to find them among the 785.

    With ``--ground-probe-weight`` a linear probe (``probe``, training-only) must also read the colour and shape of
    the object the question names (``question_object``) from the supervised layer's input at the letter position:
    the head's query can only match a named object's tokens if that position holds the name."""

    def __init__(self, model, args):
        super().__init__(model, args.ground_layer, args.ground_head)
        hidden = model.config.text_config.hidden_size
        self.probe = (torch.nn.Linear(hidden, len(S.COLOR_NAMES) + len(S.SHAPES))
                      if args.ground_probe_weight > 0 else None)

    def loss(self, ground):
        """(loss, mean attention mass on the answer's tokens, probe loss or None) over ``ground`` (row, letter
        position, positions, weight, (colour, shape)): the loss is the weighted mean of -log mass
        (``--ground-task-weight``), the mass a plain mean; the probe's cross-entropy is over the named parts."""
        h, cos, sin = self.take()
        if h is None or not ground:
            return None
        out, mass, wts = [], [], []
        for b in sorted({g[0] for g in ground}):
            cb, sb = self.row_rotary(cos, sin, b)
            keys = head_keys(self.attn, h[b], cb, sb, self.head)
            for _, p, pos, w, _ in (g for g in ground if g[0] == b):
                lg = head_log_attention(self.attn, keys, h[b], cb, sb, self.head, p)[pos].logsumexp(0)
                out.append(-lg)
                mass.append(lg.exp().item())
                wts.append(w)
        wts = torch.tensor(wts, dtype=torch.float32, device=out[0].device)
        probe = None
        if self.probe is not None:
            z = self.probe(torch.stack([h[b, p] for b, p, *_ in ground])).float()       # (n, colours + shapes)
            tgt = torch.tensor([g[4] for g in ground], dtype=torch.long, device=z.device)  # (n, 2)
            parts = torch.split(z, [len(S.COLOR_NAMES), len(S.SHAPES)], dim=-1)
            ce = [F.cross_entropy(part, tgt[:, j], ignore_index=LM_AUX_IGNORE) for j, part in enumerate(parts)
                  if (tgt[:, j] != LM_AUX_IGNORE).any()]
            probe = sum(ce) if ce else None
        return (torch.stack(out) * wts).sum() / wts.sum(), float(np.mean(mass)), probe


class Tracking(SupervisedHead):
    """Training-only supervision of object tracking across frames, for "motion so far" (the moving-direction
    task): one head (``--track-head``) of one layer (``--track-layer``) should put its attention, from every
    video token an object holds after its first frame, on that object's tokens in its first frame (``track_tokens``;
    -log of that mass, recomputed from the layer's own projections like ``Binding``'s). With
    ``--track-probe-weight`` a linear probe (``probe``, training-only) must read the row and column of that first
    position from the layer's output at the same token: what the head's value must bring, so that the token holds
    where its object was next to where it is (the position loss keeps the latter in the features)."""

    def __init__(self, model, args):
        super().__init__(model, args.track_layer, args.track_head)
        hidden = model.config.text_config.hidden_size
        self.probe = torch.nn.Linear(hidden, 2 * CGRID) if args.track_probe_weight > 0 else None
        self.out = LayerCapture(model, args.track_layer) if self.probe is not None else None

    def remove(self):
        self.handle.remove()
        if self.out is not None:
            self.out.handle.remove()

    def loss(self, track):
        """(attention loss, mean attention mass on the first frame's cells, probe loss or None) over ``track``
        (row, query positions, [target positions per query], [(row, column) per query])."""
        h, cos, sin = self.take()
        out_h = self.out.out if self.out is not None else None
        if self.out is not None:
            self.out.out = None
        if h is None or not track:
            return None
        a, hd = self.attn, self.attn.head_dim
        losses, feats, centres = [], [], []
        for b, qpos, targets, cells in track:
            cb, sb = self.row_rotary(cos, sin, b)
            keys = head_keys(a, h[b], cb, sb, self.head)                                  # (L, hd)
            qi = torch.tensor(qpos, device=h.device)
            q = a.q_proj(h[b, qi]).view(len(qpos), -1, hd)[:, self.head]                   # (n, hd)
            q = _rotate(q, cb[qi], sb[qi])
            scores = ((q @ keys.T) * a.scaling).float()                                    # (n, L)
            causal = torch.arange(keys.shape[0], device=h.device)[None, :] > qi[:, None]
            logp = scores.masked_fill(causal, float("-inf")).log_softmax(-1)
            on = torch.zeros_like(causal)
            for i, t in enumerate(targets):
                on[i, t] = True
            losses.append(-logp.masked_fill(~on, float("-inf")).logsumexp(-1))
            if out_h is not None:
                feats.append(out_h[b, qi])
                centres += cells
        lg = torch.cat(losses)
        probe = None
        if feats:
            z = self.probe(torch.cat(feats)).float()
            rows, cols = z.split(CGRID, dim=-1)
            tgt = torch.tensor(centres, dtype=torch.long, device=z.device)
            probe = F.cross_entropy(rows, tgt[:, 0]) + F.cross_entropy(cols, tgt[:, 1])
        return lg.mean(), float((-lg.detach()).exp().mean()), probe


def make_eval_set(args, shuffle: bool = True):
    """Held-out items from the ``val`` seed; ``shuffle=False`` gives the same videos and answers with the
    options in canonical order (the curriculum's easy format, for diagnosis)."""
    items = []
    for task in S.TASKS:
        for i in range(args.eval_n):
            s = S.make_item(task, S.item_rng(S.SPLIT_SEEDS["val"], task, i), shuffle=shuffle)
            items.append((task, s.item, s.frames))
    return items


# ----------------------------------------------------------------------------------------------------------
# Model, loss, evaluation
# ----------------------------------------------------------------------------------------------------------

class AuxCapture:
    """Forward hook on the multimodal projector: keeps its (B*T, 196, D) output for the auxiliary loss."""

    def __init__(self, model):
        self.out = None
        self.handle = model.model.multi_modal_projector.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output


def position_loss(pos_head, feats):
    """Cross-entropy of each patch's row and column (GRID classes each) read linearly from the projector output
    ``feats`` (B*T, GRID*GRID, D): keeps where a patch is in the features the language model receives, which
    motion ("where is it now, where was it before") needs and the content targets alone let fade."""
    idx = torch.arange(GRID * GRID, device=feats.device)
    z = pos_head(feats).float()                                            # (B*T, GRID*GRID, 2*GRID)
    rows, cols = z.split(GRID, dim=-1)
    tgt_r, tgt_c = (idx // GRID).expand(z.shape[0], -1), (idx % GRID).expand(z.shape[0], -1)
    return (F.cross_entropy(rows.reshape(-1, GRID), tgt_r.reshape(-1))
            + F.cross_entropy(cols.reshape(-1, GRID), tgt_c.reshape(-1)))


def ordinal_position_loss(head, feats):
    """Mean squared error of each patch's row and column, scaled to [-1, 1], read linearly from the projector
    output ``feats`` (B*T, GRID*GRID, D): position as one direction per axis, so that where an object moved is a
    linear difference of two tokens' features (the categorical ``position_loss`` lets each row be any direction)."""
    idx = torch.arange(GRID * GRID, device=feats.device)
    tgt = torch.stack([idx // GRID, idx % GRID], -1).float() * (2.0 / (GRID - 1)) - 1.0       # (GRID*GRID, 2)
    z = head(feats).float()                                                                  # (B*T, GRID*GRID, 2)
    return F.mse_loss(z, tgt.expand_as(z))


def add_attention_loss(loss, stats, name, r, weight, probe_weight):
    """``loss`` plus a supervised head's (attention loss, mass, probe loss or None) ``r`` (None: nothing), weighted;
    the mass and the probe loss go to ``stats`` as ``<name>_mass`` / ``<name>_probe``."""
    if r is None:
        return loss
    stats[f"{name}_mass"] = r[1]
    loss = loss + weight * r[0]
    if r[2] is not None:
        stats[f"{name}_probe"] = r[2].item()
        loss = loss + probe_weight * r[2]
    return loss


def train_loss(model, aux_head, capture, batch, args, lm_head=None, lm_capture=None, video_id=None,
               answer_head=None, answer_capture=None, bind=None, pos_head=None, grounding=None, tracking=None,
               pos_ord_head=None):
    ids, mask, wt, pix, aux, lm_aux, answers = batch[:7]
    ground = batch[7] if len(batch) > 7 else []
    track = batch[8] if len(batch) > 8 else []
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix)
        logits = out.logits[:, :-1].float()
    tgt = ids[:, 1:]
    w = wt[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view_as(w)
    lm = (ce * w).sum() / w.sum().clamp(min=1)
    # diagnostics: the loss on the answer letters alone (the token the benchmark scores) and on the caption
    letter = (w > 0) & (ids[:, :-1] == args.paren_id) & torch.isin(tgt, torch.tensor(args.letter_ids, device=tgt.device))
    cap = (w > 0) & (w < 1)
    stats = {"lm": lm.item(), "letter": (ce[letter].mean().item() if letter.any() else float("nan")),
             "caption": (ce[cap].mean().item() if cap.any() else float("nan"))}
    loss = lm
    if aux is not None and args.aux_weight > 0:
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            z = aux_head(capture.out).float()
        parts = torch.split(z, list(N_AUX), dim=-1)
        a = sum(F.cross_entropy(p.reshape(-1, p.shape[-1]), aux[..., j].reshape(-1)) for j, p in enumerate(parts))
        stats["aux"] = a.item()
        loss = loss + args.aux_weight * a
    if lm_aux is not None and lm_head is not None:
        # the video positions of each row, in order: the video tokens are one contiguous run per sequence
        h = lm_capture.out[ids == video_id].view(lm_aux.shape[0], lm_aux.shape[1], -1)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            z = lm_head(h).float()
        parts = torch.split(z, list(N_LM_AUX), dim=-1)
        la = [F.cross_entropy(p.reshape(-1, p.shape[-1]), lm_aux[..., j].reshape(-1), ignore_index=LM_AUX_IGNORE)
              * (args.motion_weight if j == LM_AUX_MOTION else 1.0) for j, p in enumerate(parts)]
        la = sum(x for x in la if torch.isfinite(x))
        stats["lm_aux"] = float(la.detach())
        loss = loss + args.lm_aux_weight * la
        lm_capture.out = None
    if answer_capture is not None:
        a = answer_loss(answer_head, answer_capture, answers, args)
        if a is not None:
            stats["answer"] = a.item()
            loss = loss + args.answer_aux_weight * a
    if bind is not None:
        loss = bind.add_to(loss, stats, "", ids, answers, args)
    if grounding is not None:
        loss = add_attention_loss(loss, stats, "ground", grounding.loss(ground), args.ground_weight,
                                  args.ground_probe_weight)
    if tracking is not None:
        loss = add_attention_loss(loss, stats, "track", tracking.loss(track), args.track_weight,
                                  args.track_probe_weight)
    if pos_head is not None:
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            pl = position_loss(pos_head, capture.out)
        stats["position"] = pl.item()
        loss = loss + args.pos_weight * pl
    if pos_ord_head is not None:
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            po = ordinal_position_loss(pos_ord_head, capture.out)
        stats["position_ordinal"] = po.item()
        loss = loss + args.pos_ordinal_weight * po
    capture.out = None
    return loss, stats


@torch.no_grad()
def evaluate(model, enc: Encoder, items, args) -> dict:
    """Official single-question prompt; the prediction is the option letter with the highest logit."""
    model.eval()
    correct = {t: 0 for t in S.TASKS}
    total = {t: 0 for t in S.TASKS}
    free = 0
    for i in range(0, len(items), args.eval_batch):
        chunk = items[i:i + args.eval_batch]
        seqs = [enc.first_turn(it["question"], it["candidates"]) for _, it, _ in chunk]
        ids, mask = pad_batch(seqs, enc.tok.pad_token_id)
        pix = pixels([f for _, _, f in chunk]).to(args.device)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device),
                           pixel_values_videos=pix).logits.cpu()
        last = mask.sum(1) - 1
        for j, (task, it, _) in enumerate(chunk):
            row = logits[j, last[j]].float()
            n = len(it["candidates"])
            pred = int(row[enc.letter_ids[:n]].argmax())
            gold = it["candidates"].index(it["answer"])
            correct[task] += int(pred == gold)
            total[task] += 1
            free += int(int(row.argmax()) == enc.letter_ids[gold])
    model.train()
    per_task = {t: correct[t] / total[t] for t in S.TASKS if total[t]}
    n = sum(total.values())
    return {"accuracy": sum(correct.values()) / n, "per_task": per_task, "free_accuracy": free / n,
            "chance": float(np.mean([S.CHANCE[t] for t in per_task])), "n": n}


def to_device(batch, device):
    return tuple(x.to(device) if torch.is_tensor(x) else x for x in batch)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, (step - args.warmup) / max(args.steps - args.warmup, 1))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


GROUND_PROBE_LR_SCALE = 10.0


def make_optimizer(model, heads, args):
    decay, no_decay = [], []
    for mod in (model, heads):
        for n, p in mod.named_parameters():
            (decay if p.dim() >= 2 and "embed" not in n else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))


def _plain_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("paren_id", "letter_ids", "device_type")}


# options that steer a sitting, not the training itself (left out of the recorded command)
_SITTING_OPTIONS = ("out", "minutes", "export", "slim", "eval_only", "restart", "ground_task_weights",
                    "task_mix_weights")


def command_line(args, steps: int = None, stop_at: int = None) -> str:
    """The training options of ``args`` that differ from the defaults, as command-line flags (the last sitting's
    recipe, recorded in the exported model's ``training.json``); ``steps``: the planned schedule (``--export``
    overwrites ``args.steps``), ``stop_at``: where the sitting ended if before the schedule's end."""
    defaults = vars(parse_args([]))
    values = dict(_plain_args(args), **({"steps": steps} if steps is not None else {}))
    if stop_at is not None and stop_at < values["steps"]:
        values["stop_at"] = stop_at
    parts = []
    for k, v in values.items():
        if k in _SITTING_OPTIONS or defaults.get(k) == v:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            parts += [f"{flag} {x}" for x in v]
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def save_checkpoint(path, model, heads, opt, step, train_seconds, args, history, optional=(), averaged_from=None):
    """``optional``: the (head, key) pairs of the optional training-only heads (None where off);
    ``averaged_from``: the inputs of ``average_checkpoints.py`` when the weights descend from an average."""
    state = {"step": step, "model": model.state_dict(), "heads": heads.state_dict(),
             **{key: head.state_dict() for head, key in optional if head is not None},
             "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "train_seconds": train_seconds,
             "args": _plain_args(args), "history": history}
    if averaged_from:
        state["averaged_from"] = averaged_from
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_model(out_dir, model, tok, meta):
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(meta, f, indent=1)


def fmt_eval(r):
    tasks = " ".join(f"{t[:12]}={r['per_task'][t]:.2f}/{S.CHANCE[t]:.2f}" for t in r["per_task"])
    line = f"acc {r['accuracy']:.3f} (chance {r['chance']:.3f}, free {r['free_accuracy']:.3f}) | {tasks}"
    if "fixed_order" in r:
        fo = r["fixed_order"]
        line += (f"\n    fixed option order: acc {fo['accuracy']:.3f} | "
                 + " ".join(f"{t[:12]}={fo['per_task'][t]:.2f}" for t in fo["per_task"]))
    return line


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo_model")
    ap.add_argument("--size", default="s", choices=sorted(D.SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000, help="planned total steps (for the LR schedule)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--questions-per-video", type=int, default=4, help="QA turns per training sequence")
    ap.add_argument("--caption-weight", type=float, default=0.5, help="loss weight of the caption (0: no caption)")
    ap.add_argument("--letter-weight", type=float, default=1.0,
                    help="loss weight of the option letter, the one token the benchmark scores (others: 1)")
    ap.add_argument("--letter-weight-from", type=int, default=0, help="step from which --letter-weight applies")
    ap.add_argument("--aux-weight", type=float, default=0.3, help="weight of the per-patch loss (0: off)")
    ap.add_argument("--lm-aux-weight", type=float, default=0.0,
                    help="weight of the per-video-token loss on the language model's hidden states (0: off)")
    ap.add_argument("--lm-aux-layer", type=int, default=-2,
                    help="decoder layer whose output feeds that loss (negative: from the end; -2 leaves the last "
                         "layer free to read it)")
    ap.add_argument("--answer-aux-weight", type=float, default=0.0,
                    help="weight of the answer-content loss at the positions that predict a letter (0: off)")
    ap.add_argument("--answer-aux-layer", type=int, default=-2,
                    help="decoder layer whose output feeds that loss (-2: the input of the last layer)")
    ap.add_argument("--answer-aux-from", type=int, default=0, help="step from which the answer loss is on")
    ap.add_argument("--bind-weight", type=float, default=0.0,
                    help="weight of the attention supervision from each letter position to the gold option (0: off)")
    ap.add_argument("--probe-weight", type=float, default=0.0,
                    help="weight of the option-letter probe at the option tokens entering --bind-layer")
    ap.add_argument("--flag-weight", type=float, default=0.0,
                    help="weight of the gold-flag probe at the option tokens entering --bind-layer")
    ap.add_argument("--bind-layer", type=int, default=-1, help="LLM layer whose attention is supervised")
    ap.add_argument("--bind-head", type=int, default=0, help="attention head that is supervised")
    ap.add_argument("--pos-weight", type=float, default=0.0,
                    help="weight of the per-patch row/column loss on the projector output (0: off)")
    ap.add_argument("--ground-weight", type=float, default=0.0,
                    help="weight of the video read-out attention supervision (0: off)")
    ap.add_argument("--ground-layer", type=int, default=-2, help="LLM layer whose read-out attention is supervised")
    ap.add_argument("--ground-head", type=int, default=0, help="attention head that is supervised")
    ap.add_argument("--ground-probe-weight", type=float, default=0.0,
                    help="weight of a training-only probe that reads the named object's colour and shape at the "
                         "letter position, from the read-out layer's input (0: off)")
    ap.add_argument("--ground-task-weight", action="append", default=[], metavar="TASK:W",
                    help="weight of one task's questions in the read-out loss (default 1; repeatable), e.g. "
                         "object_existence:4 for the only task whose read-out must match colour and shape together")
    ap.add_argument("--pos-ordinal-weight", type=float, default=0.0,
                    help="weight of the per-patch ordinal position loss (row and column as one direction each)")
    ap.add_argument("--track-weight", type=float, default=0.0,
                    help="weight of the tracking loss: one head attends from an object's later tokens to its first frame")
    ap.add_argument("--track-layer", type=int, default=0, help="LLM layer whose tracking attention is supervised")
    ap.add_argument("--track-head", type=int, default=0, help="attention head that is supervised")
    ap.add_argument("--track-queries", type=int, default=48, help="tracked tokens per sequence (a random subset)")
    ap.add_argument("--track-probe-weight", type=float, default=0.0,
                    help="weight of the probe that reads the object's first cell from the tracking layer's output")
    ap.add_argument("--motion-weight", type=float, default=1.0,
                    help="weight of 'motion so far' among the per-video-token targets (--lm-aux-weight)")
    ap.add_argument("--task-mix", action="append", default=[], metavar="TASK:W",
                    help="sampling weight of one task's training videos (default 1, uniform; repeatable), e.g. "
                         "moving_direction:3 for three times as many direction videos")
    ap.add_argument("--curriculum-steps", type=int, default=600)
    ap.add_argument("--start-difficulty", type=float, default=0.0)
    ap.add_argument("--shuffle-from", type=float, default=0.3,
                    help="fraction of the curriculum after which shuffled options are phased in")
    ap.add_argument("--lookup", type=int, default=32, help="text-only option look-up sequences per step (0: off)")
    ap.add_argument("--lookup-weight", type=float, default=0.5)
    ap.add_argument("--indirect", type=int, default=0,
                    help="text-only questions per step whose answer must be worked out from stated facts (0: off)")
    ap.add_argument("--lookup-pretrain", type=int, default=0,
                    help="first steps train on text-only look-up sequences only (no video), a cheap warm start")
    ap.add_argument("--lookup-pretrain-batch", type=int, default=64)
    ap.add_argument("--frames-schedule", default="",
                    help='fewer frames early, e.g. "4:300,8:600" (4 frames before step 300, 8 before 600, then 16)')
    ap.add_argument("--no-zero-init", dest="zero_init", action="store_false")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="fp32 (use on CPUs without native bf16, e.g. AVX2-only: emulated bf16 is several times slower)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (training data stay on CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=0, help="stop this sitting after this many minutes (0: none)")
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop this sitting at this step (0: none; --steps still sets the LR schedule)")
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-n", type=int, default=30, help="held-out items per task")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--no-eval-fixed", dest="eval_fixed", action="store_false",
                    help="skip the diagnostic evaluation with options in canonical order")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--export", action="store_true", help="only write <out>/model from the checkpoint (no training)")
    ap.add_argument("--slim", action="store_true",
                    help="only write <out>/checkpoint-slim.pt: the checkpoint without optimizer state (to keep)")
    ap.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    args.device_type = torch.device(args.device).type          # for torch.autocast
    def task_weights(specs, flag):
        out = {}
        for spec in specs:
            task, _, w = spec.partition(":")
            try:
                w = float(w)
            except ValueError:
                w = -1.0
            if task not in S.TASKS or not w >= 0:
                ap.error(f"{flag} {spec!r}: expected TASK:W with a task of {list(S.TASKS)} and W >= 0")
            out[task] = w
        return out

    args.ground_task_weights = task_weights(args.ground_task_weight, "--ground-task-weight")
    args.task_mix_weights = task_weights(args.task_mix, "--task-mix")
    if args.task_mix_weights and sum(args.task_mix_weights.get(t, 1.0) for t in S.TASKS) <= 0:
        ap.error("--task-mix: every task has weight 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    log_path = os.path.join(args.out, "log.jsonl")

    tok = D.build_demo_tokenizer()
    enc = Encoder(tok)
    model, _ = D.build_demo_model(tok, args.size, seed=args.seed, zero_residuals=args.zero_init)
    model.train()
    torch.manual_seed(args.seed)
    aux_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(N_AUX))
    capture = AuxCapture(model)
    hidden = model.config.text_config.hidden_size
    lm_head = torch.nn.Linear(hidden, sum(N_LM_AUX)) if args.lm_aux_weight > 0 else None
    model.to(args.device)
    aux_head.to(args.device)
    if lm_head is not None:
        lm_head.to(args.device)
    n_layers = model.config.text_config.num_hidden_layers
    lm_capture = LayerCapture(model, args.lm_aux_layer % n_layers) if lm_head is not None else None
    heads = torch.nn.ModuleList([aux_head] + ([lm_head] if lm_head is not None else []))
    args.paren_id, args.letter_ids = tok.convert_tokens_to_ids("("), enc.letter_ids
    opt = make_optimizer(model, heads, args)
    # the answer head lives in its own parameter group, added last, so runs that start without it can resume with it
    answer_head = torch.nn.Linear(hidden, len(ANSWER_CLASSES)).to(args.device) if args.answer_aux_weight > 0 else None
    answer_capture = LayerCapture(model, args.answer_aux_layer % n_layers) if answer_head is not None else None
    n_params = sum(p.numel() for p in model.parameters())
    # the binding losses (probe head in its own parameter group, added after the answer head's)
    bind = Binding(model, tok, args) if (args.bind_weight > 0 or args.probe_weight > 0 or args.flag_weight > 0) \
        else None
    if bind is not None:
        bind.heads.to(args.device)
    grounding = Grounding(model, args) if args.ground_weight > 0 else None
    # the position head and the read-out probe (own parameter groups, added after the binding probe's, in this order)
    pos_head = torch.nn.Linear(hidden, 2 * GRID).to(args.device) if args.pos_weight > 0 else None
    ground_probe = grounding.probe.to(args.device) if grounding is not None and grounding.probe is not None else None
    tracking = Tracking(model, args) if args.track_weight > 0 else None
    track_probe = tracking.probe.to(args.device) if tracking is not None and tracking.probe is not None else None
    pos_ord_head = torch.nn.Linear(hidden, 2).to(args.device) if args.pos_ordinal_weight > 0 else None
    if pos_ord_head is not None:
        # zero: the loss starts at the targets' variance, not at a random read of large features that would take
        # over the clipped gradient of a trained model
        torch.nn.init.zeros_(pos_ord_head.weight)
        torch.nn.init.zeros_(pos_ord_head.bias)

    # optional heads join in a fixed order (answer head, binding probe, position head, read-out probe, track probe,
    # ordinal position head), each in its own parameter group; a head that joins a run which started without it
    # gets fresh moments, the others keep theirs
    optional = [(answer_head, "answer_head"), (bind.heads if bind is not None else None, "bind_heads"),
                (pos_head, "pos_head"), (ground_probe, "ground_probe"), (track_probe, "track_probe"),
                (pos_ord_head, "pos_ord_head")]

    step, train_seconds, history, averaged_from = 0, 0.0, [], None
    if os.path.isfile(ckpt_path) and not args.restart:
        state = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        for k in ("size", "seed", "batch", "questions_per_video"):
            if state["args"].get(k) != getattr(args, k):
                print(f"warning: checkpoint has {k}={state['args'].get(k)}, command line {getattr(args, k)}")
        model.load_state_dict(state["model"])
        if "heads" in state:
            heads.load_state_dict(state["heads"])
        else:                                       # checkpoints written before the LM-side loss existed
            aux_head.load_state_dict(state["aux_head"])
        # a slim checkpoint (--slim) has no optimizer state: AdamW starts with fresh moments
        opt_state = state.get("optimizer")
        for head, key in optional:
            if head is not None and key in state:
                head.load_state_dict(state[key])
                opt.add_param_group({"params": list(head.parameters()), "weight_decay": args.weight_decay})
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for head, key in optional:
            if head is not None and key not in state:
                opt.add_param_group({"params": list(head.parameters()), "weight_decay": args.weight_decay})
        if opt_state is None:
            print("note: checkpoint without optimizer state (slim): AdamW moments start afresh")
        torch.set_rng_state(state["torch_rng"])
        step, train_seconds, history = state["step"], state["train_seconds"], state["history"]
        averaged_from = state.get("averaged_from")          # weights made by average_checkpoints.py
        print(f"resumed from {ckpt_path} at step {step} ({train_seconds / 60:.1f} train-min)")
    else:
        # the evaluation prompt and the first turn of a training sequence are the same tokens
        probe = S.make_item("moving_direction", S.item_rng(0, "moving_direction", 0))
        full = tok(D.render_prompt(tok, probe.item["question"], probe.item["candidates"], num_video_tokens=N_VIDEO),
                   add_special_tokens=False).input_ids
        assert enc.first_turn(probe.item["question"], probe.item["candidates"]) == full
        print(f"new run: size {args.size}, {n_params / 1e6:.2f} M parameters, seed {args.seed}")
        for head, _ in optional:
            if head is not None:
                opt.add_param_group({"params": list(head.parameters()), "weight_decay": args.weight_decay})

    for late in (ground_probe, track_probe, pos_ord_head):
        if late is None:
            continue
        # a fresh linear read of features the LLM already has, joining late when the schedule's rate is low: it
        # learns at GROUND_PROBE_LR_SCALE x that rate (its gradient into the LLM is the point)
        for g in opt.param_groups:
            if any(p is late.weight for p in g["params"]):
                g["lr_scale"] = GROUND_PROBE_LR_SCALE

    eval_items = make_eval_set(args)
    fixed_items = make_eval_set(args, shuffle=False) if args.eval_fixed else None

    def run_eval():
        r = evaluate(model, enc, eval_items, args)
        if fixed_items is not None:
            rf = evaluate(model, enc, fixed_items, args)
            r["fixed_order"] = {"accuracy": rf["accuracy"], "per_task": rf["per_task"]}
        return r

    if args.eval_only:
        r = run_eval()
        print(f"step {step}: {fmt_eval(r)}")
        return 0
    if args.slim:
        state = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        state.pop("optimizer", None)
        out = os.path.join(args.out, "checkpoint-slim.pt")
        torch.save(state, out)
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, no optimizer state)")
        return 0
    planned_steps = args.steps
    if args.export:
        args.steps = step                            # skip the loop: straight to writing <out>/model

    def answer_args(step):
        if answer_capture is None:
            return None, None
        answer_capture.out = None
        return (answer_head, answer_capture) if step >= args.answer_aux_from else (None, answer_capture)

    # every trained parameter: the model, the always-on heads, the optional heads
    clipped = [*model.parameters(), *heads.parameters(),
               *(p for head, _ in optional if head is not None for p in head.parameters())]
    t_sitting = time.time()
    ema = None
    while step < args.steps:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args) * g.get("lr_scale", 1.0)
        if step < args.lookup_pretrain:              # text-only phase: learn to bind answers to option letters
            t_data = 0.0
            loss, letter = lookup_loss(model, to_device(make_lookup_batch(step, args, enc, args.lookup_pretrain_batch),
                                                        args.device), args,
                                       *answer_args(step))
            stats = {"lookup_letter": letter}
        else:
            batch = to_device(make_batch(step, args, enc), args.device)
            t_data = time.time() - t0
            loss, stats = train_loss(model, aux_head, capture, batch, args, lm_head, lm_capture, enc.video_id,
                                     *answer_args(step), bind=bind, pos_head=pos_head, grounding=grounding,
                                     tracking=tracking, pos_ord_head=pos_ord_head)
        if args.lookup > 0 and step >= args.lookup_pretrain:
            l2, stats["lookup_letter"] = lookup_loss(model, to_device(make_lookup_batch(step, args, enc), args.device), args,
                                                     *answer_args(step), bind=bind, stats=stats, prefix="lookup_")
            loss = loss + args.lookup_weight * l2
        if args.indirect > 0 and step >= args.lookup_pretrain:
            l3, stats["indirect_letter"] = lookup_loss(model, to_device(make_indirect_batch(step, args, enc),
                                                                        args.device), args, *answer_args(step),
                                               bind=bind, stats=stats, prefix="indirect_")
            loss = loss + args.lookup_weight * l3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, 1.0)
        opt.step()
        step += 1
        dt = time.time() - t0
        train_seconds += dt
        ema = stats if ema is None else {k: 0.9 * ema.get(k, v) + 0.1 * v for k, v in stats.items()}
        if step % args.log_every == 0:
            print(f"step {step} | {train_seconds / 60:.1f} train-min | {dt:.2f} s/step (data {t_data:.2f}) | "
                  + " ".join(f"{k} {v:.3f}" for k, v in ema.items()) + f" | lr {lr_at(step - 1, args):.2e}",
                  flush=True)
        done = (step >= args.steps or (args.minutes and time.time() - t_sitting > 60 * args.minutes)
                or (args.stop_at and step >= args.stop_at))
        if (step % args.eval_every == 0 and step > args.lookup_pretrain) or done:
            r = run_eval()
            rec = {"step": step, "samples": step * args.batch, "train_minutes": round(train_seconds / 60, 2),
                   "loss": ema, **r}
            history.append(rec)
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"eval step {step} ({train_seconds / 60:.1f} train-min): {fmt_eval(r)}", flush=True)
        if step % args.ckpt_every == 0 or done:
            save_checkpoint(ckpt_path, model, heads, opt, step, train_seconds, args, history, optional,
                            averaged_from)
        if done:
            break
    capture.handle.remove()
    for c in (lm_capture, answer_capture, bind, grounding):
        if c is not None:
            c.handle.remove()
    if tracking is not None:
        tracking.remove()
    model.eval()
    last = history[-1] if history else {}
    save_model(os.path.join(args.out, "model"), model, tok,
               {"step": step, "train_minutes": round(train_seconds / 60, 2), "args": _plain_args(args),
                "parameters": n_params, "last_eval": last,
                "command": command_line(args, steps=planned_steps, stop_at=step),
                **({"averaged_from": averaged_from} if averaged_from else {})})
    print(f"saved {os.path.join(args.out, 'model')} at step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
