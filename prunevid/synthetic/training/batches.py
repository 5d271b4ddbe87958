"""The training batches, drawn fresh every step from the seeded stream ``default_rng([seed, step])``: the curriculum
(difficulty, option order, frames, letter weight), video batches with every target, and the text-only look-up and
indirect sequences."""
from __future__ import annotations

import numpy as np
import torch

from ... import synthetic as S
from .pruning import draw_plan
from .labels import SINK, cell_fractions, ground_tokens, lm_token_labels, patch_labels, question_object, track_tokens
from .sequences import ANSWER_CLASSES, LOOKUP_POOLS, TOKENS_PER_FRAME, Encoder, pad_batch, pixels


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
    coverage = []
    for _ in range(args.batch):
        task = None                                 # uniform, drawn by S.sample (older runs replay unchanged)
        if args.task_mix_weights:
            p = np.array([args.task_mix_weights.get(t, 1.0) for t in S.TASKS])
            task = S.TASKS[int(rng.choice(len(S.TASKS), p=p / p.sum()))]
        s = S.sample(rng, task, difficulty=difficulty, shuffle=bool(rng.random() < p_shuffle), extras=True,
                     version=args.version)
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
                if (args.ground_weight > 0 or args.lm_aux_weight > 0 or args.track_weight > 0
                    or args.prune_informed_prob > 0) else None)
        if args.prune_informed_prob > 0:              # each frame token's object coverage, for object-biased plans
            coverage.append(frac.sum(-1).ravel())
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
    # the pruned-input plan comes from its own stream: runs without --prune-prob replay their batches unchanged
    plan = (draw_plan(np.random.default_rng([args.seed, step, 3]), len(seqs), n_video, args, coverage or None)
            if args.prune_prob > 0 else None)
    return (ids, mask, wt, pixels(frames), aux, lm_aux, torch.tensor(answers, dtype=torch.long).view(-1, 3),
            ground, track, plan)


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
