"""The trainer's command line: every option of the recipe and of a sitting, with its help text, parsed and checked."""
from __future__ import annotations

import argparse

import torch

from ... import synthetic as S
from .. import demo_model as D

# the --help description: the first line of data_scripts/train_demo_model.py's docstring, as before the package
DESCRIPTION = ("Train the demo video LLM (a plain LlavaOnevisionForConditionalGeneration) on the synthetic benchmark, "
               "on CPU.")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=DESCRIPTION)
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
    ap.add_argument("--shape-weight", type=float, default=0.0,
                    help="weight of an extra per-patch shape loss on the patches an object covers only (0: off); the "
                         "per-patch loss is a mean over every patch, mostly background, so an object's shape weighs "
                         "little in it (trial 16: shape was near chance in the video tokens)")
    ap.add_argument("--vision-only", action="store_true",
                    help="train the vision tower, the projector and the per-patch head alone, on the per-patch "
                         "losses (--aux-weight, --shape-weight), the language model untouched and not run; its own "
                         "run (--out, --lr, --steps), which a later run starts from with --init-from")
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
    ap.add_argument("--version", type=int, default=1, choices=(1, 2, 3),
                    help="the synthetic world's version the videos come from (training and held-out evaluation)")
    ap.add_argument("--prune-prob", type=float, default=0.0,
                    help="share of video batches that run on a random subset of their video tokens (0: off)")
    ap.add_argument("--prune-retain", default="0.1:1.0", metavar="LO:HI",
                    help="retained share of a pruned batch's frame tokens, drawn uniformly from [LO, HI]")
    ap.add_argument("--prune-merge-prob", type=float, default=0.5,
                    help="share of pruned batches whose dropped tokens are merged into the most similar kept one")
    ap.add_argument("--original-positions-prob", type=float, default=0.5,
                    help="share of pruned batches whose kept tokens keep their unpruned RoPE positions (else "
                         "re-numbered, the official rule)")
    ap.add_argument("--prune-informed-prob", type=float, default=0.0,
                    help="share of pruned batches whose tokens are drawn object-biased (weight 1 + bias x object "
                         "coverage, bias log-uniform in [1, 1000]: from near-random to the oracle's choice), so that "
                         "object-dense subsets, what saliency-driven methods keep, are in the training distribution")
    ap.add_argument("--prune-informed-bias", default="0:3", metavar="LO:HI",
                    help="log10 range of the object bias of --prune-informed-prob draws (default 0:3, i.e. 1..1000; "
                         "2:3 keeps them near the oracle's object-first choice)")
    ap.add_argument("--init-from", default="",
                    help="a new run starts from this trainer checkpoint's weights and heads (step 0); a deeper "
                         "--size spreads its LLM layers evenly, the new layers starting as the identity")
    ap.add_argument("--eval-pruned", action="append", default=[], metavar="SELECTOR:RETAIN:POSITIONS",
                    help="also evaluate on pruned input (repeatable), e.g. random:0.25:renumber, "
                         "oracle:0.25:original (oracle: object tokens first, then random background; question: the "
                         "tokens the question is about first, as the kit's oracle with focus=question; --version 2 or 3)")
    ap.add_argument("--eval-blind", action="store_true",
                    help="also evaluate with every frame black (a model that answers from the video is at chance)")
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

    try:
        lo, hi = (float(v) for v in args.prune_retain.split(":"))
        assert 0 < lo <= hi <= 1
    except (ValueError, AssertionError):
        ap.error(f"--prune-retain {args.prune_retain!r}: expected LO:HI with 0 < LO <= HI <= 1")
    args.prune_retain_range = (lo, hi)
    try:
        lo, hi = (float(v) for v in args.prune_informed_bias.split(":"))
        assert 0 <= lo <= hi <= 9
    except (ValueError, AssertionError):
        ap.error(f"--prune-informed-bias {args.prune_informed_bias!r}: expected LO:HI with 0 <= LO <= HI <= 9 "
                 "(log10 of the bias)")
    args.prune_informed_bias_range = (lo, hi)
    for name in ("prune_prob", "prune_merge_prob", "original_positions_prob", "prune_informed_prob"):
        if not 0 <= getattr(args, name) <= 1:
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    args.eval_pruned_specs = []
    for spec in args.eval_pruned:
        parts = spec.split(":")
        try:
            sel, retain, positions = parts[0], float(parts[1]), parts[2]
            assert len(parts) == 3 and sel in ("random", "oracle", "question") and 0 < retain <= 1
            assert positions in ("renumber", "original")
        except (IndexError, ValueError, AssertionError):
            ap.error(f"--eval-pruned {spec!r}: expected SELECTOR:RETAIN:POSITIONS, SELECTOR random, oracle or question, "
                     "0 < RETAIN <= 1, POSITIONS renumber or original")
        if sel == "question" and args.version < 2:
            ap.error(f"--eval-pruned {spec!r}: the question selector needs --version 2 or 3 (those worlds record "
                     "which objects each question is about)")
        args.eval_pruned_specs.append((sel, retain, positions))
    args.ground_task_weights = task_weights(args.ground_task_weight, "--ground-task-weight")
    args.task_mix_weights = task_weights(args.task_mix, "--task-mix")
    if args.task_mix_weights and sum(args.task_mix_weights.get(t, 1.0) for t in S.TASKS) <= 0:
        ap.error("--task-mix: every task has weight 0")
    if args.shape_weight < 0 or (args.shape_weight > 0 and args.aux_weight <= 0):
        ap.error(f"--shape-weight {args.shape_weight}: expected >= 0, and > 0 only with the per-patch loss on "
                 "(--aux-weight > 0), whose labels it reads")
    if args.vision_only and args.shape_weight <= 0:
        ap.error("--vision-only trains on the per-patch losses: it needs --shape-weight > 0 (the object-patch shape "
                 "loss it exists for) with --aux-weight > 0")
    return args
