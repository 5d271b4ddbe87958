"""The training objective: the weighted language-model loss on answers and captions plus every auxiliary loss
(per-patch, per-video-token, answer content, binding, read-out, tracking, position), for video batches and for
text-only ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .labels import GRID, LM_AUX_IGNORE, LM_AUX_MOTION, N_AUX, N_LM_AUX
from .pruning import pruned_forward, remap_labels


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


def patch_losses(z, labels):
    """The per-patch head's losses from its logits ``z`` (..., sum(N_AUX)) and labels (..., 3) (colour, shape,
    scene; 0 = none): (the per-patch loss, the shape cross-entropy on the patches an object covers or None where
    none does, its accuracy among the shapes or None, how many object patches there are). Shared by the joint
    objective and the vision-only phase."""
    parts = torch.split(z, list(N_AUX), dim=-1)
    aux = sum(F.cross_entropy(p.reshape(-1, p.shape[-1]), labels[..., j].reshape(-1)) for j, p in enumerate(parts))
    logits, target = parts[1].reshape(-1, N_AUX[1]), labels[..., 1].reshape(-1)
    on = target > 0                                          # shape 0 = no object
    if not on.any():
        return aux, None, None, 0
    shape = F.cross_entropy(logits[on], target[on])
    with torch.no_grad():
        acc = (logits[on][:, 1:].argmax(-1) + 1 == target[on]).float().mean()
    return aux, shape, acc, int(on.sum())


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
    plan = batch[9] if len(batch) > 9 else None
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        if plan is None:
            out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pix)
        else:               # pruned input (--prune-prob): every position-indexed label follows the kept tokens
            out, ids, sel, newpos = pruned_forward(model, ids, mask, pix, video_id, plan)
            wt = wt.gather(1, sel)
            answers, lm_aux, ground, track = remap_labels(newpos, plan.keep, answers, lm_aux, ground, track)
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
        a, sh, _, _ = patch_losses(z, aux)
        stats["aux"] = a.item()
        loss = loss + args.aux_weight * a
        if args.shape_weight > 0 and sh is not None:
            # the shape of the object a patch belongs to, on object patches only
            stats["shape"] = sh.item()
            loss = loss + args.shape_weight * sh
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
