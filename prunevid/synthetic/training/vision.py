"""The vision-only phase (``--vision-only``): the vision tower, the projector and the per-patch head trained alone on
the per-patch losses, without the language model.

Why (trial 16 of data_scripts/README.md): trained end to end, the demo model's video tokens carry each object's
colour but not its shape (probes near chance), so object existence, the one task that asks for colour and shape
together, stays near chance on "no" videos holding the asked colour in another shape. The shape loss added to the
joint objective (``--shape-weight``) did not move at the joint schedule's rate; the tower alone, at its own rate,
learns it (object-patch shape loss 1.1 -> 0.64 in 9 CPU minutes, about 4 steps/s). The language model's weights
are left untouched here; a following run starts from this one's checkpoint (``--init-from``) and lets the language
model learn to read the new features.
"""
from __future__ import annotations

import numpy as np
import torch

from ... import synthetic as S
from .labels import patch_labels
from .losses import ordinal_position_loss, patch_losses, position_loss
from .sequences import pixels

# the video task used for the held-out shape measurement: the one task whose answer needs colour and shape together
VISION_EVAL_TASK = "object_existence"


def vision_parameters(model, aux_head) -> list:
    """The parameters the vision-only phase trains: the vision tower, the projector and the per-patch head."""
    return [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
            *aux_head.parameters()]


def make_vision_optimizer(model, aux_head, args):
    """AdamW over ``vision_parameters`` only (decay on matrices, as the joint optimizer does)."""
    decay, no_decay = [], []
    for p in vision_parameters(model, aux_head):
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))


def vision_batch(step: int, args):
    """(pixels (B, T, 3, S, S), per-patch labels (B*T, GRID*GRID, 3)) of ``args.batch`` videos drawn from the seeded
    stream ``default_rng([seed, step])`` at full difficulty, their tasks drawn with ``--task-mix``'s weights
    (uniform without it). Every frame is used: the tower sees frames one at a time, so frames are its batch."""
    rng = np.random.default_rng([args.seed, step])
    p = np.array([args.task_mix_weights.get(t, 1.0) for t in S.TASKS])
    samples = [S.sample(rng, S.TASKS[int(rng.choice(len(S.TASKS), p=p / p.sum()))], extras=False,
                        version=args.version) for _ in range(args.batch)]
    return vision_inputs(samples)


def vision_inputs(samples):
    """(pixels, per-patch labels) of ``samples`` (``S.Sample`` objects), every frame."""
    pix = pixels([s.frames for s in samples])
    labels = torch.stack([patch_labels(s.video) for s in samples])           # (B, T, GRID*GRID, 3)
    return pix, labels.view(-1, labels.shape[-2], labels.shape[-1])


def vision_loss(model, aux_head, capture, pix, labels, args, pos_head=None, pos_ord_head=None):
    """(loss, stats) of one vision-only batch: ``--aux-weight`` x the per-patch loss (colour, shape, scene of every
    patch) plus ``--shape-weight`` x the shape cross-entropy on the patches an object covers, plus the position
    losses of the joint recipe where their heads are given (``--pos-weight``, ``--pos-ordinal-weight``: the language
    model reads where a patch is from the same features, so they must keep saying it). ``stats``: ``aux``,
    ``shape`` (object-patch shape loss), ``shape_accuracy`` (its argmax among the shapes, background excluded),
    ``object_patches`` (how many patches it was measured on), ``position`` / ``position_ordinal`` when on."""
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        model.model.get_video_features(pixel_values_videos=pix.to(args.device))
        feats = capture.out                                                   # (B*T, GRID*GRID, D)
        z = aux_head(feats).float()                                           # (B*T, GRID*GRID, sum(N_AUX))
        pos = position_loss(pos_head, feats) if pos_head is not None else None
        pos_ord = ordinal_position_loss(pos_ord_head, feats) if pos_ord_head is not None else None
    capture.out = None
    aux, shape, acc, objects = patch_losses(z, labels.to(z.device))
    stats = {"aux": aux.item(), "object_patches": objects}
    loss = args.aux_weight * aux
    if shape is not None:
        stats["shape"] = shape.item()
        stats["shape_accuracy"] = acc.item()
        loss = loss + args.shape_weight * shape
    if pos is not None:
        stats["position"] = pos.item()
        loss = loss + args.pos_weight * pos
    if pos_ord is not None:
        stats["position_ordinal"] = pos_ord.item()
        loss = loss + args.pos_ordinal_weight * pos_ord
    return loss, stats


def make_vision_eval_set(args) -> list:
    """The held-out videos of the shape measurement: ``--eval-n`` object-existence items of the world's ``val``
    split (the same videos the benchmark's ``synthetic-vN-val`` files hold)."""
    seed = S.split_seeds(args.version)["val"]
    return [s for _, _, s in S.split_items(seed, args.eval_n, tasks=(VISION_EVAL_TASK,), version=args.version)]


@torch.no_grad()
def vision_evaluate(model, aux_head, capture, samples, args, pos_head=None, pos_ord_head=None) -> dict:
    """Held-out per-patch measurement over ``samples``: ``aux`` (per-patch loss), ``shape`` (object-patch shape
    loss) and ``shape_accuracy``, each pooled over every patch (object patch for shape) of every sample, ``n``
    (samples), and ``position`` / ``position_ordinal`` where their heads are given."""
    was = model.training
    model.eval()
    tot = {"aux": 0.0, "shape": 0.0, "shape_accuracy": 0.0}
    patches, objects = 0, 0
    for i in range(0, len(samples), max(args.eval_batch, 1)):
        pix, labels = vision_inputs(samples[i:i + args.eval_batch])
        _, st = vision_loss(model, aux_head, capture, pix, labels, args, pos_head, pos_ord_head)
        n = labels.shape[0] * labels.shape[1]
        tot["aux"] += st["aux"] * n
        for k in ("position", "position_ordinal"):
            if k in st:
                tot[k] = tot.get(k, 0.0) + st[k] * n
        patches += n
        if st["object_patches"]:
            tot["shape"] += st["shape"] * st["object_patches"]
            tot["shape_accuracy"] += st["shape_accuracy"] * st["object_patches"]
            objects += st["object_patches"]
    model.train(was)
    return {"n": len(samples), "aux": tot["aux"] / max(patches, 1),
            "shape": tot["shape"] / objects if objects else float("nan"),
            "shape_accuracy": tot["shape_accuracy"] / objects if objects else float("nan"), "object_patches": objects,
            **{k: tot[k] / patches for k in ("position", "position_ordinal") if k in tot}}


def fmt_vision_eval(r: dict) -> str:
    return (f"per-patch loss {r['aux']:.3f} | object-patch shape loss {r['shape']:.3f}, accuracy "
            f"{100 * r['shape_accuracy']:.1f}% ({r['object_patches']} patches of {r['n']} {VISION_EVAL_TASK} videos)"
            + "".join(f" | {k.replace('_', ' ')} loss {r[k]:.3f}" for k in ("position", "position_ordinal") if k in r))
