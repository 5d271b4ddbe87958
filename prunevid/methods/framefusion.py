"""``framefusion``: FrameFusion (Fu et al., ICCV'25) — inside the LLM, merge the visual tokens that repeat the same
location of the previous frame, layer after layer, then prune the rest by attention to a compute budget.

Transcribed from the authors' code, thu-nics/FrameFusion (read at commit fbec1d2), no line of it copied:
``framefusion/main.py`` (``FrameFusion.forward``, ``compute_similarity_and_token_index_by_patch``,
``merge_tokens_and_get_mask``, ``_compute_pruning_ratio``, ``find_contigious_latter_index``),
``framefusion/utils.py`` (``scaled_dot_product_attention(..., num=1)``: the last query row only) and
``framefusion/models/qwen2/modeling_qwen2.py`` (where the decoder layers call it). Defaults: ``FrameFusion.__init__``
(``cost=0.3``, ``similarity_lower_bound=0.6``, ``ratio_lower_bound=0.1``; the README's LLaVA-Video example uses the
same three).

Each visual token carries its *patch type*, its location inside the frame (0..P-1; text: none), which follows it
through the cascade. With N' visual tokens present at a merging step:

1. ``adjacent_similarity``: the tokens ordered by patch type (sequence order inside a type); each one's cosine
   similarity with the previous token of the same type (the same location in the nearest earlier frame still
   present); -2 for the first token of each type;
2. the budget bound ``pruning_ratio(sparsities, cost, L)`` (upstream's ``_compute_pruning_ratio``): with
   s_i = prod_{j<=i}(1 - a_j) over the sparsities a_j of the steps so far and R = L x cost - sum_i s_i, the
   sparsity the remaining ``L - len`` layers need is ``1 - R / ((L - len) s)`` (0 when that is negative; a
   ``ValueError`` when R < 0);
3. ``merge_decision``: the tokens with similarity >= ``similarity_lower_bound`` are merged; their share
   a = count / N' is recorded when a < the bound of step 2 (and merging stops once a < ``ratio_lower_bound``);
   otherwise the ``int(bound x N')`` most similar are merged and FrameFusion is finished (no pruning step);
4. ``merge_runs``: each maximal run of merged tokens (in patch-type order) is averaged with the token before it
   (the run's anchor: ``(anchor + sum(run)) / (len + 1)``); the merged tokens leave the sequence;
5. pruning, once merging has stopped: the decoder layer after the last merge ranks the visual tokens by the
   attention of the **last** query row (RoPE, causal, mean over heads: ``score_at_layer(query="last")``, no N x N
   matrix) and the next layers keep the ``round(N' (1 - p))`` best, p = ``pruning_ratio`` of all the steps.

The shared ``LayerPruner`` carries the cascade out: a ``CutPlan`` with one ``FrameFusionCut`` at the input of
every decoder layer (``cache="own"``: each layer caches the tokens it ran on, as upstream's), sharing one
``FrameFusionState``; each cut decides during the prefill whether it merges, prunes or passes (``choose`` returns
``None``). Upstream hard-codes ``num_layers = 28`` in the cost rule; the kit passes the model's depth.

Kit adaptations (``docs/fidelity.md``):

* where the steps sit: upstream merges on layer 0's input and then after the attention of every layer (before its
  MLP); the kit merges on the input of layers 0, 1, 2, .. (one step per layer: the similarity of step j >= 1 is
  taken on layer j-1's output, after its MLP), and prunes on the input of the layer after the last merge with the
  scores of the layer that ran on the last merge's output (upstream: after that layer's attention). With one step
  per layer the cost rule's accounting is exact: the visual tokens per decoder layer averaged over the prefill
  equal ``cost`` whenever the budget binds;
* upstream raises "The cost is too small" when a merge step leaves the budget unreachable for the next one; the
  kit takes upstream's budget branch (step 3's ``int(bound x N')``) at that step instead, so a video never stops
  a run (the step's kind is then ``"ceiling"``, upstream's own budget branch ``"budget"``); the budget branch never
  merges the first token of a location (upstream's top-k could pick one, similarity -2, when the bound asks for
  more than the tokens that have a predecessor);
* similarities, merged averages and the attention softmax in float32 (upstream: the model dtype; the
  head-mean scores are rounded to the model dtype before the top-k, as upstream's); the attention row from the
  layer's own q/k (SDPA keeps running; upstream recomputes the row with a small eager helper, same arithmetic);
* kept and merged tokens keep their original RoPE positions (a merged run takes its anchor's); decoding continues
  from the original length (upstream slices cos/sin at prefill the same way but numbers the decode steps from the
  shortened cache);
* LLaVA-OneVision's image-newline after the video is text (never merged, never pruned), as in upstream's
  LLaVA-Video layout; ``cost = 1`` is the no-op (upstream: its budget branch merges ``int(0 x N')`` = 0 tokens).

Matched budget ``retain``: upstream's own knob, ``cost`` (the visual tokens per decoder layer averaged over the
prefill / the visual tokens in; ``budget_measure = "layer_average"``). It is a ceiling: where the similarity merges
alone go further the achieved mean is lower (reported in ``info["budget"]``). ``info["framefusion"]`` holds the
sparsities, every step (layer, visual tokens after it, kind), the layer mean and the final KV ratio.

Architectures: every registered one whose visual tokens enter the LLM frame by frame with a fixed count per frame
(LLaVA-OneVision, LLaVA-NeXT-Video, PLLaVA, Qwen2-VL / Qwen2.5-VL with its temporal patch pairs as the frames; and
their tiny models): FrameFusion reads only the LLM's hidden states and the patch types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from ..config import _check_number
from ..layer_pruner import CutPlan, LayerCut, score_at_layer
from ..prune import top_k_sorted
from .base import ConfigMixin, LayerSchedule, Method, SequenceLayout

IGNORE = -2.0                # upstream's IGNORE_TOKEN: the similarity of a token with no predecessor of its type
BUDGET_SLACK = 0.02          # a matched budget counts as reached within 2 points of the target


@dataclass
class FrameFusionConfig(ConfigMixin):
    """``cost``: the compute budget, the visual tokens per decoder layer averaged over the prefill / the visual
    tokens in (1.0: no-op); ``similarity_lower_bound`` (S_th): cosine similarity at or above which a token merges
    into its predecessor of the same location; ``ratio_lower_bound``: merging stops after a step that merged less
    than this share; ``retain``: the matched budget, which sets ``cost``."""

    cost: float = 0.3
    similarity_lower_bound: float = 0.6
    ratio_lower_bound: float = 0.1
    retain: Optional[float] = None

    def __post_init__(self):
        self.cost = _check_number("cost", self.cost, 0.0, 1.0, lo_open=True)
        self.similarity_lower_bound = _check_number("similarity_lower_bound", self.similarity_lower_bound, -1.0, 1.0)
        self.ratio_lower_bound = _check_number("ratio_lower_bound", self.ratio_lower_bound, 0.0, 1.0)
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)

    @property
    def budget(self) -> float:
        return self.cost if self.retain is None else self.retain


# ------------------------------------------------------------------------------------------------ kernel steps
def adjacent_similarity(hidden: torch.Tensor, patch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, D) visual hidden states, (N,) patch types -> (sim (N,) float32, order (N,) long).

    ``order``: the token indices sorted by patch type, sequence order inside a type; ``sim[k]``: cosine similarity
    (``dot / (|a| |b|)``) of token ``order[k]`` with ``order[k - 1]`` where both have the same type, else -2."""
    n = hidden.shape[0]
    order = torch.sort(patch, stable=True).indices
    sim = torch.full((n,), IGNORE, dtype=torch.float32, device=hidden.device)
    if n < 2:
        return sim, order
    h = hidden.float()[order]
    a, b = h[:-1], h[1:]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    same = patch[order][:-1] == patch[order][1:]
    sim[1:] = torch.where(same, cos, torch.full_like(cos, IGNORE))
    return sim, order


def pruning_ratio(sparsities: Sequence[float], cost: float, n_layers: int) -> float:
    """Upstream's ``_compute_pruning_ratio``: the sparsity the layers after ``len(sparsities)`` merging steps need
    so that the visual tokens per layer average ``cost`` over ``n_layers`` layers.

    s_i = prod_{j<=i} (1 - a_j), R = n_layers x cost - sum_i s_i; ``1 - R / ((n_layers - len) s_last)``, or 0 when
    that share is above 1; ``ValueError`` when R < 0 (the steps so far already spent more than the budget)."""
    s, spent = 1.0, 0.0
    for a in sparsities:
        s *= 1 - a
        spent += s
    remain = n_layers * cost - spent
    if remain < 0:
        raise ValueError(f"FrameFusion cost={cost} is too small: {len(sparsities)} merging steps already average "
                         f"{spent / n_layers:.3f} of the visual tokens over {n_layers} layers")
    share = remain / ((n_layers - len(sparsities)) * s)
    return 0.0 if share > 1 else 1.0 - share


def merge_decision(sim: torch.Tensor, bound: float, upper: float) -> Tuple[torch.Tensor, float, str]:
    """(N,) ``adjacent_similarity`` values -> (positions in patch order to merge, sorted; their share a of N;
    ``"threshold"`` or ``"budget"``).

    ``"threshold"``: every position with ``sim >= bound``, when their share is below ``upper`` (the cost rule's
    bound); ``"budget"`` otherwise: the ``int(upper x N)`` most similar (never a first-of-its-type position)."""
    n = sim.numel()
    above = (sim >= bound).nonzero().squeeze(1)
    share = above.numel() / n if n else 0.0
    if share < upper:
        return above, share, "threshold"
    return budget_positions(sim, upper), share, "budget"


def budget_positions(sim: torch.Tensor, upper: float) -> torch.Tensor:
    """Upstream's budget branch: the ``int(upper x N)`` positions of highest similarity, sorted (at most the
    positions that have a predecessor of their type)."""
    valid = int((sim > IGNORE).sum())
    k = min(int(upper * sim.numel()), valid)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=sim.device)
    return sim.topk(k).indices.sort().values


def merge_runs(hidden: torch.Tensor, order: torch.Tensor, positions: torch.Tensor) -> Tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(N, D) hidden states, (N,) patch order, (M,) positions (into ``order``) to merge -> (merged (N, D) in the
    input dtype, keep (N,) bool).

    Each maximal run of merged positions k..k+m-1 is averaged with position k-1, its anchor:
    ``h[anchor] = (h[anchor] + sum of the run) / (m + 1)`` (float32); the merged tokens are dropped (``keep``
    False)."""
    n = hidden.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=hidden.device)
    if positions.numel() == 0:
        return hidden.clone(), keep
    flag = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    flag[positions] = True
    pos = torch.arange(n, device=hidden.device)
    anchor = torch.cummax(torch.where(flag, torch.full_like(pos, -1), pos), dim=0).values   # last unmerged <= k
    if bool((anchor[positions] < 0).any()):
        raise ValueError("a merged token has no anchor (the first position of the patch order cannot merge)")
    src, dst = order[positions], order[anchor[positions]]
    h = hidden.float()
    acc = h.clone()
    acc.index_add_(0, dst, h[src])
    count = torch.ones(n, dtype=torch.float32, device=hidden.device)
    count.index_add_(0, dst, torch.ones(src.numel(), dtype=torch.float32, device=hidden.device))
    out = hidden.clone()
    anchors = torch.unique(dst)
    out[anchors] = (acc[anchors] / count[anchors, None]).to(hidden.dtype)
    keep[src] = False
    return out, keep


def layer_profile(n_layers: int, n: float, steps: Sequence[Sequence]) -> list:
    """(n_layers,) visual tokens each decoder layer runs on: ``n``, then from each step's layer on the count it left
    (``steps``: [layer, count, ...] in layer order, a step at layer l acting on layer l's input)."""
    tokens = [n] * n_layers
    for step in steps:
        layer, count = int(step[0]), step[1]
        tokens[layer:] = [count] * (n_layers - layer)
    return tokens


# ------------------------------------------------------------------------------------------------ the cascade
@dataclass
class FrameFusionState:
    """What the cuts of one prefill share: the patch types of the visual tokens present, the sparsities of the
    merging steps, the phase (``"merge"`` -> ``"prune"`` -> ``"done"``), the pending scores and the record."""

    patch: torch.Tensor
    n_layers: int
    cost: float
    similarity_lower_bound: float
    ratio_lower_bound: float
    n_in: int
    sparsities: List[float] = field(default_factory=list)
    phase: str = "merge"
    scores: Optional[torch.Tensor] = None
    steps: list = field(default_factory=list)
    record: dict = field(default_factory=dict)
    budget: Optional[dict] = None

    def log(self, layer: int, count: int, kind: str) -> None:
        self.steps.append([layer, count, kind])
        tokens = layer_profile(self.n_layers, self.n_in, self.steps)
        mean = sum(tokens) / (self.n_layers * self.n_in) if self.n_in else None
        self.record.update(sparsities=list(self.sparsities), steps=[list(s) for s in self.steps],
                           layer_mean_ratio=mean, final_kv_ratio=tokens[-1] / self.n_in if self.n_in else None)
        if self.budget is not None and mean is not None:
            target = self.budget["target_ratio"]
            ok = abs(mean - target) <= BUDGET_SLACK
            note = None
            if mean < target - BUDGET_SLACK:
                note = (f"framefusion's similarity merges alone average {mean:.3f} of the visual tokens per layer "
                        f"here, below the budget (its cost is a ceiling: the pruning step keeps every token)")
            elif mean > target + BUDGET_SLACK:
                why = ("its budget step merges at most all but the first token of each location"
                       if self.phase == "done" and not any(s[2] == "prune" for s in self.steps)
                       else "it merged at every layer and never reached its pruning step")
                note = f"framefusion averages {mean:.3f} of the visual tokens per layer here, above the budget: {why}"
            self.budget.update(expected_ratio=mean, reachable=ok, note=note)


@dataclass
class FrameFusionCut(LayerCut):
    """One layer's step of the cascade (``at="input"``): a merging step, the pruning step or a pass (``None``),
    as the shared ``FrameFusionState`` says. ``fold`` returns the merged (or kept) hidden states ``choose`` built."""

    state: Optional[FrameFusionState] = None
    at: str = "input"
    _folded: Optional[torch.Tensor] = None

    def choose(self, layer, hidden, kwargs, visual, query_start):
        st = self.state
        self._folded = None
        if st.phase == "done":
            return None
        n = visual.stop - visual.start
        if st.phase == "prune":
            st.phase = "done"
            p = pruning_ratio(st.sparsities, st.cost, st.n_layers)
            kept = top_k_sorted(st.scores, round(n * (1 - p)))
            self.scores = st.scores
            st.record.update(pruning_ratio=p, prune_layer=self.layer)
            st.log(self.layer, int(kept.numel()), "prune")
            return kept
        # a merging step on this layer's input
        st.patch = st.patch.to(hidden.device)
        last = self.layer + 1 >= st.n_layers
        upper = pruning_ratio(st.sparsities, st.cost, st.n_layers)
        sim, order = adjacent_similarity(hidden[0, visual], st.patch)
        positions, share, kind = merge_decision(sim, st.similarity_lower_bound, upper)
        if kind == "threshold" and not last:
            try:       # upstream would raise "The cost is too small" at the next step: its budget branch here
                pruning_ratio(st.sparsities + [share], st.cost, st.n_layers)
            except ValueError:
                positions, kind = budget_positions(sim, upper), "ceiling"
        if kind == "threshold":
            st.sparsities.append(share)
            if share < st.ratio_lower_bound:
                st.phase = "prune"
        else:
            st.phase = "done"
        merged, keep_visual = merge_runs(hidden[0, visual], order, positions)
        st.patch = st.patch[keep_visual]
        kept = keep_visual.nonzero().squeeze(1)
        dev = hidden.device
        keep = torch.cat([torch.arange(visual.start, device=dev), visual.start + kept,
                          torch.arange(visual.stop, hidden.shape[1], device=dev)])
        new = hidden.clone()
        new[0, visual] = merged
        new = new.index_select(1, keep)
        if st.phase == "prune":
            if last:
                st.phase = "done"
            else:      # this layer's attention of the last row on the merged tokens ranks them for the next layer
                pe = kwargs.get("position_embeddings")
                if pe is not None:
                    pe = tuple(t.index_select(-2, keep.to(t.device)) for t in pe)
                vis = slice(visual.start, visual.start + int(kept.numel()))
                st.scores = score_at_layer(layer, new, vis, vis.stop, scoring="rope_causal", reduce="mean",
                                           position_embeddings=pe, query="last").to(hidden.dtype)
        st.log(self.layer, int(kept.numel()), kind)
        if positions.numel() == 0:
            return None
        self._folded = new
        return kept

    def fold(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self._folded is not None and self._folded.shape[1] == keep.numel():
            out, self._folded = self._folded, None
            return out
        return hidden.index_select(1, keep)


# ------------------------------------------------------------------------------------------------ the method
class FrameFusionMethod(Method):
    name = "framefusion"
    config_class = FrameFusionConfig
    budget_measure = "layer_average"        # cost / retain: visual tokens per decoder layer, averaged over the prefill

    @property
    def enabled(self) -> bool:
        return self.config.budget < 1.0

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        return n_visual if given is None else given            # FrameFusion acts inside the LLM only

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None, steps: Optional[Sequence[Sequence]] = None) -> LayerSchedule:
        """From each step's layer on, the count that step left (``steps``: ``info["framefusion"]["steps"]`` of a
        prefill, which the video decides); without them, the analytic profile: every layer on ``cost x N`` (the
        layer mean the cost rule reaches when the budget binds; the FLOPs of the papers' linear convention are
        exact, the attention term approximate). Every layer caches the tokens it ran on. ``kept`` is not read."""
        n = self.entering(n_visual, entering)
        if not self.enabled:
            return LayerSchedule([n] * n_layers, [n] * n_layers)
        tokens = layer_profile(n_layers, n, steps) if steps is not None else [self.config.budget * n] * n_layers
        return LayerSchedule(tokens, list(tokens))

    def plan(self, layout: SequenceLayout) -> Optional[CutPlan]:
        n, f, n_layers = layout.visual_len, layout.num_frames, layout.num_layers
        if n == 0:
            return None
        if f < 1 or n % f or n != layout.visual_tokens_in:
            raise NotImplementedError(f"framefusion needs the visual tokens frame by frame with one count per frame; "
                                      f"got {n} tokens for {f} frames ({layout.visual_tokens_in} in)")
        cfg = self.config
        p = n // f
        device = None
        if layout.reduction is not None and layout.reduction.tokens is not None:
            device = layout.reduction.tokens.device
        state = FrameFusionState(patch=torch.arange(p, device=device).repeat(f), n_layers=n_layers,
                                 cost=cfg.budget, similarity_lower_bound=cfg.similarity_lower_bound,
                                 ratio_lower_bound=cfg.ratio_lower_bound, n_in=layout.visual_tokens_in)
        state.record.update(cost=cfg.budget, similarity_lower_bound=cfg.similarity_lower_bound,
                            ratio_lower_bound=cfg.ratio_lower_bound, n_layers=n_layers, tokens_per_frame=p,
                            sparsities=[], steps=[], layer_mean_ratio=1.0, final_kv_ratio=1.0, prune_layer=None)
        if cfg.retain is not None:
            state.budget = {"target_ratio": cfg.retain, "cost": cfg.retain, "expected_ratio": 1.0,
                            "reachable": False, "note": None}
        if layout.reduction is not None:                 # what patch.info reports after the prefill
            layout.reduction.info["framefusion"] = state.record
            if state.budget is not None:
                layout.reduction.info["budget"] = state.budget
        cuts = [FrameFusionCut(layer=i, n_keep=0, at="input", state=state) for i in range(n_layers)]
        return CutPlan(seq_len=layout.seq_len, visual_start=layout.visual_start, visual_len=n,
                       query_start=layout.query_start, cuts=cuts, cache="own")
