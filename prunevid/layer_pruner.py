"""Shared in-LLM mechanics, written once for every model and method that prunes inside the decoder.

* ``score_at_layer``: stage-2 scores for the visual tokens from a decoder layer's own q/k, forming only the
  post-video query rows (works under SDPA / flash attention: no layer runs eagerly, no N x N matrix).
* Plans: ``Stage2Plan`` (one cut: PruneVid's stage 2, FastV) and ``CutPlan`` (several ``LayerCut`` s, each on
  what the cuts before it kept: PyramidDrop; the multi-layer methods to come reuse it). A cut is made on a
  layer's input (that layer already runs on the kept tokens) or on its output; the KV caches either all hold the
  last cut's tokens (``cache="cut"``) or each layer keeps what it ran on (``"own"``).
* ``LayerPruner``: forward hooks on the decoder layers of one model instance that carry out an *armed* plan
  during one prefill: at a cut's layer they rank the visual tokens (pre-hook, the layer's own q/k), cut the
  hidden states (and, by the plan's cache rule, the caches of the layers before), and slice the per-layer inputs
  (rotary cos/sin, position ids, a 4-D mask) of every later layer. Kept tokens keep their original position ids.
  Decode steps are touched only by a ``CachePolicy`` (decode-time KV methods: Look-M, DyCoke's dynamic KV
  pruning) and, after an ``"own"``-cache prefill, by the per-layer slicing of a 4-D mask; the same hooks run both.
* ``rope_queries`` / ``cached_keys``: the RoPE-applied queries of a few rows and a layer's cached keys, for
  cache policies that score entries from the attention the layer really computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, List, Optional, Sequence

import torch

from .prune import apply_rope, attention_column_sums, select_tokens, top_k_sorted, visual_token_scores


def get_cache(kwargs: dict):
    """The KV cache passed to a layer (transformers renamed ``past_key_values`` to ``cache`` in 5.24)."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cut_cache(cache, layer_ids: Sequence[int], index: torch.Tensor) -> None:
    """Keep only sequence positions ``index`` in the K/V of the given layers of a ``DynamicCache``."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise NotImplementedError(f"KV-cache surgery supports transformers' DynamicCache, got {type(cache).__name__}")
    for i in layer_ids:
        layer = layers[i]
        if type(layer).__name__ != "DynamicLayer":
            raise NotImplementedError(
                f"KV-cache surgery supports full-attention DynamicLayer caches, got {type(layer).__name__} at layer {i}")
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


def _qk_pre_rope(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor):
    """Layer-normed ``hidden`` (1, N, D) -> pre-RoPE queries (H, R, d) for ``rows`` and keys (H, N, d)."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)[0]                                     # (N, D)
    head_dim = attn.head_dim
    q = attn.q_proj(normed[rows]).view(rows.numel(), -1, head_dim).transpose(0, 1)   # (H, R, d)
    k = attn.k_proj(normed).view(normed.shape[0], -1, head_dim).transpose(0, 1)      # (Hkv, N, d)
    if getattr(attn, "q_norm", None) is not None:                                 # Qwen3-style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    groups = q.shape[0] // k.shape[0]
    if groups > 1:                                                                # GQA: head h uses kv head h // groups
        k = k.repeat_interleave(groups, dim=0)
    return q, k


def query_rows(n: int, query_start: int, query: str, device=None) -> torch.Tensor:
    """Sequence indices of the query rows that score the visual tokens.

    ``"after_video"``: every token from ``query_start`` on (PruneVid; the last token if there is none);
    ``"last"``: the last token only (FastV's official code); ``"all"``: every token (FastV's paper).
    """
    if query == "after_video":
        return torch.arange(min(query_start, n - 1), n, device=device)
    if query == "last":
        return torch.tensor([n - 1], device=device)
    if query == "all":
        return torch.arange(n, device=device)
    raise ValueError(f"query must be 'after_video', 'last' or 'all', got {query!r}")


def rope_rows(x: torch.Tensor, position_embeddings: Optional[tuple], rows: Optional[torch.Tensor] = None):
    """Apply the layer's RoPE (cos, sin of shape (1, N, d)) to (H, R, d) rows ``rows`` (default: all)."""
    if position_embeddings is None:
        raise ValueError("this scoring needs the layer's position embeddings (RoPE cos/sin)")
    cos, sin = (t[0] for t in position_embeddings)
    if rows is not None:
        cos, sin = cos[rows], sin[rows]
    return apply_rope(x, cos, sin)


def score_at_layer(layer: torch.nn.Module, hidden: torch.Tensor, visual: slice, query_start: int, *,
                   scoring: str = "official", reduce: str = "max",
                   position_embeddings: Optional[tuple] = None, query: str = "after_video",
                   block: int = 256) -> torch.Tensor:
    """Score of each visual token at this decoder layer, from the layer's own q/k (no N x N matrix).

    Args:
        hidden: (1, N, D) the layer's input hidden states.
        visual: slice of the visual positions; ``query_start``: first post-video position.
        scoring: ``"official"`` (PruneVid: pre-RoPE, unmasked) or ``"rope_causal"`` (RoPE applied, causal
            rows: the attention map the layer itself computes; FastV).
        query: which rows score (``query_rows``). With ``"all"`` the rows are summed block by block
            (``attention_column_sums``) and ``reduce`` must be ``"mean"`` (mean over heads and rows).
        position_embeddings: the layer's (cos, sin), needed for ``"rope_causal"``.

    Returns:
        (N_visual,) scores, in the model dtype for the max reduction (as PruneVid's official code, whose
        float32 softmax is cast to the model dtype before the max), float32 for the mean.
    """
    n = hidden.shape[1]
    rows = query_rows(n, query_start, query, hidden.device)
    with torch.no_grad():
        q, k = _qk_pre_rope(layer, hidden, rows)
        positions = None
        if scoring == "rope_causal":
            q = rope_rows(q, position_embeddings, rows)
            k = rope_rows(k, position_embeddings)
            positions = rows
        elif scoring != "official":
            raise ValueError(f"unknown scoring {scoring!r}")
        if query == "all":
            if reduce != "mean":
                raise ValueError("query='all' supports reduce='mean' only (block-wise column sums)")
            sums = attention_column_sums(q, k, scaling=layer.self_attn.scaling, query_positions=positions,
                                         block=block)
            return sums.sum(dim=0)[visual] / (q.shape[0] * q.shape[1])
        return visual_token_scores(q, k, visual, scaling=layer.self_attn.scaling, query_positions=positions,
                                   reduce=reduce, out_dtype=hidden.dtype)


def rope_queries(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor,
                 position_embeddings: Optional[tuple]) -> torch.Tensor:
    """(1, N, D) layer input -> (H, R, d) queries of ``rows`` with the layer's RoPE applied."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)[0]
    q = attn.q_proj(normed[rows]).view(rows.numel(), -1, attn.head_dim).transpose(0, 1)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    return rope_rows(q, position_embeddings, rows)


def cached_keys(cache, i: int, heads: int) -> torch.Tensor:
    """Keys of layer ``i`` in the cache (already rotated), batch 0, repeated to ``heads`` (GQA): (H, N, d)."""
    k = cache.layers[i].keys[0]
    groups = heads // k.shape[0]
    return k.repeat_interleave(groups, dim=0) if groups > 1 else k


@dataclass
class Stage2Plan:
    """A one-cut in-LLM plan (PruneVid's stage 2, FastV), for one prefill (sequence indices refer to the LLM input
    of that prefill).

    Layer ``layer`` (0-indexed) runs on every token and scores the visual ones with its own q/k; layers
    ``layer + 1..`` run on the kept ones, and the KV cache of layers ``0..layer`` is cut to them (so every
    layer caches the same entries). PruneVid: ``layer = selected_layer``, ``query="after_video"``,
    ``select="groups"``. FastV: ``layer = K - 1``, ``scoring="rope_causal"``, ``query="last"``,
    ``reduce="mean"``, ``select="topk"``. The ``LayerPruner`` runs it as a ``CutPlan`` of one ``"output"`` cut
    with ``cache="cut"`` (the plan is its own cut: ``cuts``, ``at``, ``choose``).
    """

    seq_len: int
    visual_start: int
    visual_len: int
    query_start: int
    static_sizes: List[int]
    dynamic_sizes: List[int]
    window_sizes: List[int]
    alpha: float
    layer: int
    scoring: str = "official"
    reduce: str = "max"
    query: str = "after_video"                     # query rows (``query_rows``): "after_video" | "last" | "all"
    select: str = "groups"                         # "groups": floor(alpha n) per group; "topk": global top n_keep
    n_keep: Optional[int] = None                   # visual tokens kept by select="topk"
    keep: Optional[torch.Tensor] = None            # sequence indices kept after layer K (text + kept visual)
    kept_visual: Optional[int] = None
    scores: Optional[torch.Tensor] = None          # (visual_len,) stage-2 scores, kept for inspection
    cache_keep: Optional[torch.Tensor] = None      # LLM-input indices layer 0's cache holds at the end (= keep)

    at: ClassVar[str] = "output"                   # the layer runs on every token; the cut is made on its output
    cache: ClassVar[str] = "cut"                   # the caches of layers 0..layer are cut too

    @property
    def cuts(self) -> list:
        return [self]

    def choose(self, layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict, visual: slice,
               query_start: int) -> torch.Tensor:
        """Score the visual tokens at ``layer`` (``score_at_layer``) and select -> sorted kept visual indices."""
        scores = score_at_layer(layer, hidden, visual, query_start, scoring=self.scoring, reduce=self.reduce,
                                position_embeddings=kwargs.get("position_embeddings"), query=self.query)
        if self.select == "groups":
            kept = select_tokens(scores, self.static_sizes, self.dynamic_sizes, self.window_sizes, self.alpha)
        elif self.select == "topk":
            kept = top_k_sorted(scores, self.n_keep if self.n_keep is not None else self.visual_len)
        else:
            raise ValueError(f"unknown selection {self.select!r}")
        self.scores = scores
        return kept


@dataclass
class LayerCut:
    """One cut of a ``CutPlan``: at decoder layer ``layer`` (0-indexed) the visual tokens still in the sequence are
    ranked by the attention the ``query`` rows pay them in that layer (``score_at_layer``: the layer's own q/k of
    its input, only the query rows formed) and the ``n_keep`` highest are kept, in sequence order.

    ``at``: ``"input"`` — the cut is made on the layer's input, so layer ``layer`` and every later one run on the
    kept tokens (PyramidDrop: ranked with layer ``layer``'s projections, dropped before it runs); ``"output"`` —
    the layer runs on every token and the cut is made on its output (PruneVid's, FastV's convention).
    ``scores_in_model_dtype``: the head-mean scores are rounded to the model dtype before the top-k (upstream
    PyramidDrop averages the heads in the model dtype, which decides ties).

    The two steps are methods, for the multi-layer methods to come: ``choose`` (another ranking: a subclass
    overrides it) and ``fold`` (what becomes of the hidden states: dropped here; a merging cut folds the dropped
    tokens into the kept ones). A subclass's ``choose`` may decide its count during the prefill (``n_keep`` is then
    unused) or return ``None``: no cut at this layer (FrameFusion places a cut at every layer and each decides,
    from the hidden states, whether it merges, prunes or passes).
    """

    layer: int
    n_keep: int
    at: str = "input"
    scoring: str = "rope_causal"
    query: str = "last"
    reduce: str = "mean"
    scores_in_model_dtype: bool = True
    # filled by the prefill
    keep: Optional[torch.Tensor] = None            # indices into the sequence this cut saw (text + kept visual)
    visual_in: Optional[int] = None                # visual tokens present when the cut was made
    kept_visual: Optional[int] = None
    scores: Optional[torch.Tensor] = None          # (visual_in,) the ranking scores

    def __post_init__(self):
        if self.at not in CUT_POINTS:
            raise ValueError(f"a cut is made at a layer's {' or '.join(CUT_POINTS)}, got at={self.at!r}")
        if self.n_keep < 0:
            raise ValueError(f"n_keep must be >= 0, got {self.n_keep}")

    def choose(self, layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict, visual: slice,
               query_start: int) -> torch.Tensor:
        """(1, N, D) layer input -> sorted indices (into the visual span) of the ``n_keep`` best-ranked tokens."""
        scores = score_at_layer(layer, hidden, visual, query_start, scoring=self.scoring, reduce=self.reduce,
                                position_embeddings=kwargs.get("position_embeddings"), query=self.query)
        if self.scores_in_model_dtype:
            scores = scores.to(hidden.dtype)
        self.scores = scores
        return top_k_sorted(scores, self.n_keep)

    def fold(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(1, T, D) hidden states and the kept sequence indices (T',) -> (1, T', D): the kept rows."""
        return hidden.index_select(1, keep)


CUT_POINTS = ("input", "output")
CACHE_RULES = ("own", "cut")


@dataclass
class CutPlan:
    """In-LLM pruning at several decoder layers, for one prefill (indices refer to the LLM input of that prefill).

    ``cuts`` run in layer order, each on the visual tokens the cuts before it kept (at most one per layer).
    Kept tokens keep their position ids (the rotary cos/sin, position ids and a 4-D mask of every later layer are
    sliced to them). ``cache``: ``"own"`` — every layer's KV cache holds the tokens that layer ran on
    (PyramidDrop's: the layers before a cut keep the longer cache; decoding slices a 4-D mask per layer);
    ``"cut"`` — each cut also cuts the caches of the layers before it, so every layer caches the last cut's
    tokens (PruneVid's, and the kit's single-cut convention).

    Filled by the prefill: ``keep`` / ``kept_visual`` — the LLM-input indices (text + visual) and the visual
    count that survive every cut; ``cache_keep`` — the LLM-input indices layer 0's cache holds (``None``: all);
    ``layer_keep`` — per layer, the LLM-input indices its cache holds (``None``: all); ``scores`` — the last
    cut's (each cut keeps its own).
    """

    seq_len: int
    visual_start: int
    visual_len: int
    query_start: int
    cuts: List[LayerCut]
    cache: str = "own"
    keep: Optional[torch.Tensor] = None
    kept_visual: Optional[int] = None
    cache_keep: Optional[torch.Tensor] = None
    layer_keep: Optional[list] = None
    scores: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.cache not in CACHE_RULES:
            raise ValueError(f"cache must be one of {CACHE_RULES}, got {self.cache!r}")
        layers = [c.layer for c in self.cuts]
        if not layers or any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"a cut plan needs cuts at strictly increasing layers, got {layers}")


class CachePolicy:
    """Decode-time / post-prefill KV-cache behaviour of a method (Look-M, DyCoke's stage 2), run by
    ``LayerPruner``'s hooks. ``phase`` is ``"prefill"`` during the prefill that set it up and ``"decode"``
    for the following steps (the model file flips it). Subclasses override what they need:

    * ``after_prefill_layer(i, layer, hidden_in, kwargs, cache)``: after decoder layer ``i`` ran on the
      prefill (its K/V are in ``cache.layers[i]``); may rewrite that layer's cache (eviction, merging).
    * ``after_decode_layer(i, layer, hidden_in, kwargs, cache)``: after layer ``i`` ran on a decode step.
    * ``before_decode_layer(i, layer, kwargs, cache)``: may return new kwargs for layer ``i`` of a decode
      step (e.g. an attention mask that hides cache entries).
    """

    phase: str = "prefill"
    info: Optional[dict] = None

    def after_prefill_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        pass

    def after_decode_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        pass

    def before_decode_layer(self, i, layer, kwargs, cache) -> Optional[dict]:
        return None

    def kept_positions(self) -> Optional[torch.Tensor]:
        """Prefill positions (LLM-input terms) still in the last layer's cache, if the policy cut it: (T',), or
        (H_kv, T') when each KV head keeps its own entries (Look-M; the same count per head)."""
        return None


class _Run:
    """What one armed prefill has cut so far: the LLM-input positions still in the sequence."""

    def __init__(self, plan, n_layers: int):
        self.plan = plan
        self.cuts = sorted(plan.cuts, key=lambda c: c.layer)
        self.next = 0                                  # index of the next cut to make
        self.stage = 0                                 # cuts made so far (a cut that passed makes none)
        self.rows: Optional[torch.Tensor] = None       # LLM-input indices still in the sequence (None: all)
        self.length = plan.seq_len
        self.visual = plan.visual_len
        self.pending: Optional[torch.Tensor] = None    # an "output" cut's keep, applied after its layer runs
        self.cache_rows: list = [None] * n_layers      # LLM-input indices each layer's cache holds (None: all)

    def cut_at(self, i: int):
        """The cut to make at layer ``i``, or None."""
        if self.next < len(self.cuts) and self.cuts[self.next].layer == i:
            return self.cuts[self.next]
        return None

    def advance(self, keep: torch.Tensor, kept_visual: int) -> None:
        """The sequence after a cut that kept ``keep`` (indices into the current sequence)."""
        self.rows = keep if self.rows is None else self.rows.index_select(0, keep.to(self.rows.device))
        self.length, self.visual = int(keep.numel()), int(kept_visual)
        self.next += 1
        self.stage += 1
        self.plan.keep, self.plan.kept_visual = self.rows, self.visual


class LayerPruner:
    """Hooks on ``layers`` that carry out an armed in-LLM plan (a ``Stage2Plan``: one cut; a ``CutPlan``: several)
    and/or a ``CachePolicy``; inert otherwise.

    Written once for every plan: before each decoder layer of an armed prefill, the layer's rotary cos/sin,
    position ids and 4-D mask are sliced to the positions still in the sequence (kept tokens keep their
    positions); at a cut's layer the visual tokens are ranked by the cut (``choose``) and the sequence is cut on
    the layer's input (``at="input"``) or output (``"output"``); with ``cache="cut"`` the caches of the layers
    before the cut are cut to the kept tokens, with ``"own"`` every layer keeps what it ran on, and the decode
    steps after such a prefill get each layer's 4-D mask sliced to its own cache.
    """

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self.layers = list(layers)
        self.plan = None
        self.policy: Optional[CachePolicy] = None
        self._run: Optional[_Run] = None
        self._memo: dict = {}
        self._seen: Optional[list] = None           # sequence length each layer ran on, while recording
        self._cache_cols: Optional[tuple] = None    # after an "own"-cache prefill: (layer-0 length, per-layer cols)
        self._handles = []
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._make_post_hook(i), with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.plan = None
        self._run = None
        self.policy = None
        self._cache_cols = None

    def set_policy(self, policy: Optional[CachePolicy]) -> None:
        self.policy = policy

    def reset_decode(self) -> None:
        """Forget what the last prefill left for its decode steps (a cache policy, per-layer cache columns)."""
        self.policy = None
        self._cache_cols = None

    def arm(self, plan) -> None:
        """Carry out ``plan`` (a ``Stage2Plan`` or ``CutPlan``) during the next prefill."""
        for cut in plan.cuts:
            if cut.layer >= len(self.layers):
                name = "selected_layer" if isinstance(cut, Stage2Plan) else "a cut at layer"
                raise ValueError(f"{name}={cut.layer} but the LLM has {len(self.layers)} layers "
                                 f"(0..{len(self.layers) - 1})")
        self.plan, self._memo, self._run = plan, {}, _Run(plan, len(self.layers))
        self._cache_cols = None

    def disarm(self):
        """End the armed prefill; the plan, with what it kept (``keep``, ``kept_visual``, ``cache_keep``)."""
        plan, run = self.plan, self._run
        self.plan, self._run, self._memo = None, None, {}
        if plan is None or run is None:
            return plan
        if run.next == 0 and run.pending is None:       # the prefill never reached a cut
            return plan
        rows = run.cache_rows
        if plan.cache == "cut":
            rows = [run.rows] * len(rows)
        plan.cache_keep = rows[0]
        if isinstance(plan, CutPlan):
            plan.layer_keep = list(rows)
            made = [c for c in run.cuts if c.scores is not None]
            plan.scores = made[-1].scores if made else None
        if plan.cache == "own":
            self._cache_cols = _cache_columns(rows, plan.seq_len)
        return plan

    def start_record(self) -> None:
        """Record the sequence length every layer runs on until ``stop_record`` (one prefill)."""
        self._seen = [None] * len(self.layers)

    def stop_record(self) -> Optional[list]:
        seen, self._seen = self._seen, None
        return seen

    # -- hooks ----------------------------------------------------------------------------------------------
    def _slice(self, obj, idx: torch.Tensor, dims: int, stage: int):
        """Slice ``obj`` along its sequence dimension(s), once per object per stage of a prefill."""
        key = (id(obj), stage)
        if key not in self._memo:
            self._memo[key] = (obj, _index_seq(obj, idx, dims))     # keep obj alive so the id stays unique
        return self._memo[key][1]

    def _sliced_kwargs(self, kwargs: dict, run: _Run) -> dict:
        """The layer's per-position inputs (rotary cos/sin, position ids, 4-D mask) cut to ``run.rows``; the
        full-length tensors the model passes to every layer are sliced, once per stage."""
        n, idx, stage = run.plan.seq_len, run.rows, run.stage
        kwargs = dict(kwargs)
        pe = kwargs.get("position_embeddings")
        if pe is not None and pe[0].shape[-2] == n:
            kwargs["position_embeddings"] = tuple(self._slice(t, idx, 1, stage) for t in pe)
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == n:
            kwargs["position_ids"] = self._slice(pos, idx, 1, stage)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
                raise NotImplementedError(f"in-LLM pruning cannot slice an attention mask of type {type(mask).__name__}")
            if mask.shape[-1] == n:
                kwargs["attention_mask"] = self._slice(mask, idx, 2, stage)
        return kwargs

    def _cut_keep(self, cut, layer, hidden, kwargs, run: _Run) -> torch.Tensor:
        """Rank and select at ``cut`` -> the kept indices of the current sequence (text + kept visual), or ``None``
        where the cut's ``choose`` passed (no cut at this layer)."""
        plan, vs = run.plan, run.plan.visual_start
        visual = slice(vs, vs + run.visual)
        query_start = plan.query_start - (plan.visual_len - run.visual)      # text is never cut
        kept = cut.choose(layer, hidden, kwargs, visual, query_start)
        if kept is None:                                                     # the cut decided not to cut
            return None
        dev = hidden.device
        keep = torch.cat([torch.arange(vs, device=dev), vs + kept.to(dev),
                          torch.arange(visual.stop, run.length, device=dev)])
        cut.keep, cut.kept_visual = keep, int(kept.numel())
        if isinstance(cut, LayerCut):
            cut.visual_in = run.visual
        return keep

    def _make_pre_hook(self, i: int) -> Callable:
        def hook(module, args, kwargs):
            out = self._pre(i, module, args, kwargs)
            if self._seen is not None:                             # the length the layer runs on (after a cut)
                a, k = (args, kwargs) if out is None else out
                self._seen[i] = int((a[0] if a else k["hidden_states"]).shape[1])
            return out
        return hook

    def _pre(self, i: int, module, args, kwargs):
        """Layer ``i`` is about to run: an armed prefill's slicing and cut; else the decode-step rules."""
        run = self._run
        if run is None:
            return self._decode_pre(i, module, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != run.length:                        # not the armed prefill's sequence
            return None
        full = kwargs                                            # the full-length inputs the model passes
        if run.rows is not None:
            kwargs = self._sliced_kwargs(full, run)
        cut = run.cut_at(i)
        keep = None if cut is None else self._cut_keep(cut, module, hidden, kwargs, run)
        if cut is not None and keep is None:                     # a cut that passed: the next one is due
            run.next += 1
        elif cut is not None:
            if cut.at == "input":
                if run.plan.cache == "cut":
                    cache = get_cache(full)
                    if cache is not None:
                        cut_cache(cache, range(i), keep)
                run.advance(keep, cut.kept_visual)
                hidden = _fold(cut, hidden, keep)
                kwargs = self._sliced_kwargs(full, run)
                if args:
                    args = (hidden,) + tuple(args[1:])
                else:
                    kwargs["hidden_states"] = hidden
            else:
                run.pending = keep
        run.cache_rows[i] = run.rows
        return None if kwargs is full else (args, kwargs)

    def _decode_pre(self, i: int, module, args, kwargs):
        """A layer call outside an armed prefill: the mask of an "own"-cache layer, then the cache policy."""
        changed = False
        cols = self._cache_cols
        if cols is not None and cols[1][i] is not None:
            mask = kwargs.get("attention_mask")
            n0, idx = cols[0], cols[1][i]
            if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] >= n0:
                tail = torch.arange(n0, mask.shape[-1], device=mask.device)
                kwargs = dict(kwargs, attention_mask=mask.index_select(-1, torch.cat([idx.to(mask.device), tail])))
                changed = True
        policy = self.policy
        if policy is not None and policy.phase == "decode":
            new = policy.before_decode_layer(i, module, kwargs, get_cache(kwargs))
            if new is not None:
                return args, new
        return (args, kwargs) if changed else None

    def _make_post_hook(self, i: int) -> Callable:
        def hook(module, args, kwargs, output):
            policy = self.policy
            if policy is not None:
                hidden_in = args[0] if args else kwargs["hidden_states"]
                if policy.phase == "prefill":
                    policy.after_prefill_layer(i, module, hidden_in, kwargs, get_cache(kwargs))
                else:
                    policy.after_decode_layer(i, module, hidden_in, kwargs, get_cache(kwargs))
            run = self._run
            if run is None or run.pending is None or run.cut_at(i) is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] != run.length:
                return None
            keep, cut = run.pending, run.cut_at(i)
            run.pending = None
            if run.plan.cache == "cut":
                cache = get_cache(kwargs)
                if cache is not None:
                    cut_cache(cache, range(i + 1), keep)
            run.advance(keep, cut.kept_visual)
            hidden = _fold(cut, hidden, keep)
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        return hook


def _fold(cut, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The hidden states after ``cut`` kept ``keep``: its own ``fold`` (``LayerCut``), else the kept rows."""
    fold = getattr(cut, "fold", None)
    return fold(hidden, keep) if fold is not None else hidden.index_select(1, keep)


def _cache_columns(rows: list, seq_len: int) -> Optional[tuple]:
    """For decoding after an "own"-cache prefill: (layer 0's prefill cache length, per layer the columns of layer
    0's cache its own cache holds, ``None`` where they are the same). ``rows``: per layer the LLM-input indices its
    cache holds (``None``: all ``seq_len``)."""
    base = rows[0]
    n0 = seq_len if base is None else int(base.numel())
    cols, any_cut = [], False
    for r in rows:
        if r is None or r is base or (base is not None and r.numel() == base.numel()):
            cols.append(None)
            continue
        cols.append(r if base is None else torch.searchsorted(base, r.to(base.device)))
        any_cut = True
    return (n0, cols) if any_cut else None


def _index_seq(t: torch.Tensor, idx: torch.Tensor, dims: int) -> torch.Tensor:
    """Keep sequence positions ``idx``: rotary cos/sin (B, N, d) on dim -2, position ids (.., N) on dim -1,
    and with ``dims=2`` a (B, 1, N, N) mask on both of its last dimensions."""
    idx = idx.to(t.device)
    if dims == 2:                                                   # (B, 1, N, N) mask
        return t.index_select(-2, idx).index_select(-1, idx)
    if t.dim() >= 3 and t.dtype.is_floating_point:                  # rotary (B, N, d)
        return t.index_select(-2, idx)
    return t.index_select(-1, idx)                                  # position ids (B, N) or (3, B, N)
