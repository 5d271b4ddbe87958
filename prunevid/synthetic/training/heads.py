"""Training-only heads and hooks on the demo model: captures of a layer's or the projector's output, and the
supervised attention heads (binding, read-out, tracking) with the helpers that recompute a head's real attention."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from ... import synthetic as S
from .labels import CGRID, LM_AUX_IGNORE


class LayerCapture:
    """Forward hook on one decoder layer of the language model: keeps its output hidden states."""

    def __init__(self, model, layer: int):
        self.out = None
        self.handle = model.model.language_model.layers[layer].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output[0] if isinstance(output, tuple) else output


class AuxCapture:
    """Forward hook on the multimodal projector: keeps its (B*T, 196, D) output for the auxiliary loss."""

    def __init__(self, model):
        self.out = None
        self.handle = model.model.multi_modal_projector.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output


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
