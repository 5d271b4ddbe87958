"""Held-out evaluation during training: items from the ``val`` seed, the official single-question prompt scored by
the option letter with the highest logit, and the printed summary."""
from __future__ import annotations

import numpy as np
import torch

from ... import synthetic as S
from .sequences import Encoder, pad_batch, pixels


def make_eval_set(args, shuffle: bool = True):
    """Held-out items from the ``val`` seed; ``shuffle=False`` gives the same videos and answers with the
    options in canonical order (the curriculum's easy format, for diagnosis)."""
    items = []
    for task in S.TASKS:
        for i in range(args.eval_n):
            s = S.make_item(task, S.item_rng(S.SPLIT_SEEDS["val"], task, i), shuffle=shuffle)
            items.append((task, s.item, s.frames))
    return items


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


def fmt_eval(r):
    tasks = " ".join(f"{t[:12]}={r['per_task'][t]:.2f}/{S.CHANCE[t]:.2f}" for t in r["per_task"])
    line = f"acc {r['accuracy']:.3f} (chance {r['chance']:.3f}, free {r['free_accuracy']:.3f}) | {tasks}"
    if "fixed_order" in r:
        fo = r["fixed_order"]
        line += (f"\n    fixed option order: acc {fo['accuracy']:.3f} | "
                 + " ".join(f"{t[:12]}={fo['per_task'][t]:.2f}" for t in fo["per_task"]))
    return line
