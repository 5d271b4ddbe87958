"""Held-out evaluation during training: items from the ``val`` seed, the official single-question prompt scored by
the option letter with the highest logit, and the printed summary."""
from __future__ import annotations

import numpy as np
import torch

from ... import synthetic as S
from .labels import CGRID, cell_fractions
from .pruning import PrunePlan, object_first_keep, pruned_forward, random_keep
from .sequences import N_VIDEO, Encoder, pad_batch, pixels


def make_eval_set(args, shuffle: bool = True):
    """Held-out items from the ``val`` seed of ``--version``; ``shuffle=False`` gives the same videos and answers
    with the options in canonical order (the curriculum's easy format, for diagnosis; version 1 only). Each item is
    (task, question, frames, ranks): ``ranks`` maps each ranked selector of ``--eval-pruned`` to its (F * P,)
    ranking key: ``oracle`` the share of each frame token's cell that objects cover, ``question`` the kit oracle's
    ``focus="question"`` key (``methods.oracle.question_score``: the tokens the question is about first, versions 2
    and 3); empty when no such evaluation is asked for."""
    from ...methods.oracle import pooled_coverage, question_score
    version = getattr(args, "version", 1)
    seed = S.split_seeds(version)["val"]
    selectors = {sel for sel, _, _ in getattr(args, "eval_pruned_specs", [])}
    if "question" in selectors and version < 2:
        raise ValueError("--eval-pruned question:...: the question focus needs --version 2 or 3 (those worlds "
                         "record which objects each question is about)")
    items = []
    frames = np.arange(S.NUM_FRAMES)
    for task in S.TASKS:
        for i in range(args.eval_n):
            s = S.make_item(task, S.item_rng(seed, task, i), shuffle=shuffle, version=version)
            ranks = {}
            if selectors & {"oracle", "question"}:
                objects = cell_fractions(s.video, frames).sum(-1)                        # (F, P)
                ranks["oracle"] = objects.ravel()
                if "question" in selectors:
                    q = np.stack([S.question_pixels(task, s.video, t) for t in frames]).astype(np.float32)
                    q = pooled_coverage(torch.from_numpy(q), (CGRID, CGRID))                  # (F, P)
                    ranks["question"] = question_score(q, torch.from_numpy(objects).float()).numpy().ravel()
            items.append((task, s.item, s.frames, ranks))
    return items


@torch.no_grad()
def evaluate(model, enc: Encoder, items, args, pruned=None, blind: bool = False) -> dict:
    """Official single-question prompt; the prediction is the option letter with the highest logit.
    ``pruned``: (selector, retain, positions) of ``--eval-pruned``: the model sees only that share of the frame
    tokens (re-numbered or original positions; selector ``random``, ``oracle``: object tokens first, or
    ``question``: the tokens the question is about first, then other objects), drawn
    from a fixed stream so every evaluation of a run sees the same subsets. ``blind``: every frame black (the
    video-blind control of ``--eval-blind``: a model that answers from the video falls to chance)."""
    model.eval()
    correct = {t: 0 for t in S.TASKS}
    total = {t: 0 for t in S.TASKS}
    free = 0
    rng = np.random.default_rng(12345)
    for i in range(0, len(items), args.eval_batch):
        chunk = items[i:i + args.eval_batch]
        seqs = [enc.first_turn(it["question"], it["candidates"]) for _, it, _, _ in chunk]
        ids, mask = pad_batch(seqs, enc.tok.pad_token_id)
        pix = pixels([np.zeros_like(f) if blind else f for _, _, f, _ in chunk]).to(args.device)
        ids, mask = ids.to(args.device), mask.to(args.device)
        with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
            if pruned is None:
                logits = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix).logits.cpu()
            else:
                sel, retain, positions = pruned
                keep = (random_keep(rng, len(chunk), N_VIDEO, retain) if sel == "random" else
                        object_first_keep(rng, [r[sel] for *_, r in chunk], retain))
                plan = PrunePlan(keep=keep, original_positions=positions == "original")
                out, _, s, _ = pruned_forward(model, ids, mask, pix, enc.video_id, plan)
                logits, mask = out.logits.cpu(), mask.gather(1, s).cpu()
        last = mask.sum(1) - 1
        for j, (task, it, _, _) in enumerate(chunk):
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


def fmt_eval(r):
    tasks = " ".join(f"{t[:12]}={r['per_task'][t]:.2f}/{S.CHANCE[t]:.2f}" for t in r["per_task"])
    line = f"acc {r['accuracy']:.3f} (chance {r['chance']:.3f}, free {r['free_accuracy']:.3f}) | {tasks}"
    if "blind" in r:
        rb = r["blind"]
        line += (f"\n    black frames: acc {rb['accuracy']:.3f} | "
                 + " ".join(f"{t[:12]}={rb['per_task'][t]:.2f}" for t in rb["per_task"]))
    for name, rp in r.get("pruned", {}).items():
        line += (f"\n    pruned {name}: acc {rp['accuracy']:.3f} | "
                 + " ".join(f"{t[:12]}={rp['per_task'][t]:.2f}" for t in rp["per_task"]))
    if "fixed_order" in r:
        fo = r["fixed_order"]
        line += (f"\n    fixed option order: acc {fo['accuracy']:.3f} | "
                 + " ".join(f"{t[:12]}={fo['per_task'][t]:.2f}" for t in fo["per_task"]))
    return line
