"""Pruned input for training and held-out evaluation (issue 24): the demo model sees, on a share of its batches,
only a subset of its video tokens, the way a pruning method hands them to the language model.

A :class:`PrunePlan` names, per row, which video tokens stay (sorted indices into the row's video run; the final
newline token always stays), whether each dropped token is merged into the kept token it is most similar to
(a feature average, as merging methods do) or simply dropped, and which RoPE positions the kept tokens get:
re-numbered ``0..L'-1`` (the official rule of every pre-LLM method) or their original, unpruned positions (the
kit's ``positions="original"``). Every row of a batch keeps the same number of tokens, so the pruned batch stays
rectangular. :func:`pruned_forward` runs the model on such input and returns, besides its output, the map from
unpruned to pruned positions that re-targets every position-indexed training label (:func:`remap_labels`).

Training draws plans from its own seeded stream (``default_rng([seed, step, 3])``), so runs without
``--prune-prob`` see exactly the batches they saw before this module existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PrunePlan:
    """Which video tokens each row keeps and how the rest is handled."""

    keep: torch.Tensor                 # (B, n_keep) long, sorted indices into the video run, newline (last) included
    merge: bool = False                # dropped tokens averaged into their most similar kept frame token
    original_positions: bool = False   # kept tokens keep their unpruned positions (else re-numbered)


def random_keep(rng: np.random.Generator, rows: int, n_video: int, retain: float) -> torch.Tensor:
    """(rows, k + 1): for each row ``k = round(retain * (n_video - 1))`` (at least 1) frame tokens drawn uniformly
    without replacement, sorted, then the newline token (index ``n_video - 1``)."""
    n = n_video - 1
    k = min(n, max(1, int(round(retain * n))))
    keep = np.stack([np.sort(rng.choice(n, k, replace=False)) for _ in range(rows)])
    return torch.from_numpy(np.concatenate([keep, np.full((rows, 1), n)], 1)).long()


def object_first_keep(rng: np.random.Generator, coverage: List[np.ndarray], retain: float) -> torch.Tensor:
    """(rows, k + 1) like :func:`random_keep`, but each row keeps the frame tokens its objects cover first (most
    covered first), then random background: the oracle token selector. ``coverage``: per row, (n_video - 1,) the
    share of each frame token's cell that objects cover (``cell_fractions(...).sum(-1).ravel()``), or any ranking
    key (highest first, ties in random order; the question focus's ``methods.oracle.question_score``)."""
    rows = []
    for cov in coverage:
        n = len(cov)
        k = min(n, max(1, int(round(retain * n))))
        noise = rng.random(n)
        order = np.lexsort((noise, -cov))           # by coverage, descending; ties (background) in random order
        rows.append(np.concatenate([np.sort(order[:k]), [n]]))
    return torch.from_numpy(np.stack(rows)).long()


def weighted_keep(rng: np.random.Generator, coverage: List[np.ndarray], retain: float, bias: float) -> torch.Tensor:
    """(rows, k + 1) like :func:`random_keep`, but each frame token is drawn with weight ``1 + bias * coverage``
    (without replacement: the Gumbel top-k of the log-weights): ``bias`` 0 is random keep, a large ``bias`` the
    oracle's object-first choice; in between, the object-dense subsets that saliency-driven methods keep."""
    rows = []
    for cov in coverage:
        n = len(cov)
        k = min(n, max(1, int(round(retain * n))))
        key = np.log1p(bias * np.asarray(cov, dtype=np.float64)) + rng.gumbel(size=n)
        rows.append(np.concatenate([np.sort(np.argsort(-key, kind="stable")[:k]), [n]]))
    return torch.from_numpy(np.stack(rows)).long()


def draw_plan(rng: np.random.Generator, rows: int, n_video: int, args, coverage=None) -> Optional[PrunePlan]:
    """A training plan, or None (the batch runs unpruned), from ``--prune-prob``, ``--prune-retain LO:HI``
    (retained share, uniform), ``--prune-merge-prob`` and ``--original-positions-prob``; with
    ``--prune-informed-prob`` that share of the pruned batches draws its tokens object-biased
    (:func:`weighted_keep`, bias log-uniform in [1, 1000], or ``--prune-informed-bias``'s range; ``coverage``: per row, each frame token's object
    coverage). The draws happen in a fixed order whatever the outcome, so the stream stays aligned across steps
    (and runs without ``--prune-informed-prob`` draw exactly what they drew before it existed)."""
    u, retain, m, o = rng.random(), rng.uniform(*args.prune_retain_range), rng.random(), rng.random()
    keep = random_keep(rng, rows, n_video, retain)
    if getattr(args, "prune_informed_prob", 0) > 0:
        informed, bias = rng.random(), float(10 ** rng.uniform(*getattr(args, "prune_informed_bias_range", (0, 3))))
        if informed < args.prune_informed_prob and coverage is not None:
            keep = weighted_keep(rng, coverage, retain, bias)
    if u >= args.prune_prob:
        return None
    return PrunePlan(keep=keep, merge=bool(m < args.prune_merge_prob),
                     original_positions=bool(o < args.original_positions_prob))


def _selection(start: torch.Tensor, keep: torch.Tensor, n_video: int, length: int) -> torch.Tensor:
    """(B, L') indices into the unpruned rows: the text before the video, the kept video tokens, the rest."""
    rows = []
    for s, k in zip(start.tolist(), keep):
        rows.append(torch.cat([torch.arange(s), s + k.cpu(), torch.arange(s + n_video, length)]))
    return torch.stack(rows)


def pruned_forward(model, ids: torch.Tensor, mask: torch.Tensor, pix: torch.Tensor, video_id: int,
                   plan: PrunePlan):
    """Run ``model`` (LLaVA-OneVision) on the batch with only ``plan``'s video tokens -> (output, ids (B, L'),
    sel (B, L') the unpruned position of each pruned position, newpos (B, L) the pruned position of each unpruned one
    or -1). The vision tower and projector run as in the plain forward (their hooks fire as usual); only what
    enters the language model changes. With every token kept and re-numbered positions the logits are the plain
    forward's (tested)."""
    cfg = model.config
    B, L = ids.shape
    emb = model.get_input_embeddings()(ids)
    vf = model.model.get_video_features(pix, vision_feature_layer=cfg.vision_feature_layer,
                                        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                                        return_dict=True).pooler_output                    # (B, n_video, D)
    n_video = vf.shape[1]
    keep = plan.keep.to(ids.device)
    n_keep = keep.shape[1]
    kept = vf.gather(1, keep[..., None].expand(-1, -1, vf.shape[-1]))                      # (B, n_keep, D)
    if plan.merge and n_keep < n_video:
        dropped = torch.ones(B, n_video, dtype=torch.bool, device=vf.device)
        dropped.scatter_(1, keep, False)
        merged = []
        for b in range(B):
            d, k = vf[b][dropped[b]], kept[b, :-1]                       # the newline token takes no merges
            target = (F.normalize(d.float(), dim=-1) @ F.normalize(k.float(), dim=-1).T).argmax(1)
            sums = k.index_add(0, target, d)
            counts = 1 + torch.bincount(target, minlength=k.shape[0]).to(k.dtype)
            merged.append(torch.cat([sums / counts[:, None], kept[b, -1:]]))
        kept = torch.stack(merged)
    start = (ids == video_id).int().argmax(1)
    sel = _selection(start, keep, n_video, L).to(ids.device)
    new = emb.gather(1, sel[..., None].expand(-1, -1, emb.shape[-1])).clone()
    for b, s in enumerate(start.tolist()):
        new[b, s:s + n_keep] = kept[b].to(new.dtype)
    pos = sel if plan.original_positions else torch.arange(sel.shape[1], device=ids.device).expand(B, -1)
    out = model(inputs_embeds=new, attention_mask=mask.gather(1, sel), position_ids=pos)
    newpos = torch.full((B, L), -1, dtype=torch.long, device=ids.device)
    newpos.scatter_(1, sel, torch.arange(sel.shape[1], device=ids.device).expand(B, -1).contiguous())
    return out, ids.gather(1, sel), sel, newpos


def remap_labels(newpos: torch.Tensor, keep: torch.Tensor, answers: torch.Tensor, lm_aux, ground: list,
                 track: list):
    """Re-target the position-indexed labels of a batch to its pruned sequence -> (answers, lm_aux, ground,
    track): answer rows (sequence, position, class) move with their text; per-video-token labels keep the kept
    tokens' rows; read-out targets lose their dropped tokens (an entry left with none is skipped); tracked
    queries that were dropped, or whose first-frame cells all were, are skipped."""
    np_ = newpos.cpu()
    answers = answers.clone()
    if len(answers):
        answers[:, 1] = np_[answers[:, 0], answers[:, 1]]
    if lm_aux is not None:
        lm_aux = lm_aux.gather(1, keep.to(lm_aux.device)[..., None].expand(-1, -1, lm_aux.shape[-1]))
    g2 = []
    for b, p, pos, w, obj in ground:
        pos = [int(np_[b, i]) for i in pos if np_[b, i] >= 0]
        if pos:
            g2.append((b, int(np_[b, p]), pos, w, obj))
    t2 = []
    for b, queries, targets, centres in track:
        q2, tg2, c2 = [], [], []
        for q, tg, c in zip(queries, targets, centres):
            tg = [int(np_[b, j]) for j in tg if np_[b, j] >= 0]
            if np_[b, q] >= 0 and tg:
                q2.append(int(np_[b, q]))
                tg2.append(tg)
                c2.append(c)
        if q2:
            t2.append((b, q2, tg2, c2))
    return answers, lm_aux, g2, t2
