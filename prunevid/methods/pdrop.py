"""``pdrop``: PyramidDrop (Xing et al., CVPR'25) — visual tokens dropped in stages inside the LLM, a pyramid.

Upstream: Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward``, ``pdrop_rank_drop``;
defaults from ``scripts/v1_5/pdrop_eval/*.sh``: ``--layer_list '[8,16,24]' --image_token_ratio_list
"[0.5,0.25,0.125]"``). The decoder is split into stages by ``layer_list``; with N visual tokens in:

1. after ``layer_list[s]`` decoder layers have run (``rank_layer = layer_idx + 1``), i.e. at the input of layer
   ``layer_list[s]`` (0-indexed), the visual tokens still present are ranked by that layer's attention
   (``self.layers[rank_layer]``: its ``input_layernorm``, ``q_proj`` / ``k_proj`` and RoPE on the hidden states
   that enter it) from one query row, the **last instruction token** (at inference the last prompt token,
   ``prompt_len + image_tokens - 1``): softmax in float32 over the whole (causal) row, cast to the model dtype,
   mean over heads, the visual columns taken;
2. the ``int(N x lam^(s+1))`` best-ranked are kept (upstream's ratio list is relative to the N tokens in:
   0.5, 0.25, 0.125 = lam^1..3 with lam = 0.5), ``topk`` then sorted, every text token kept; layer
   ``layer_list[s]`` and the layers after it run on them.

So on a model of L layers with cut layers l_1 < .. < l_S, layers 0..l_1-1 run on N tokens, l_s..l_{s+1}-1 on
``int(N lam^s)``. Shapes: the kept counts ``stage_counts(N, lam, S)`` -> [N, k_1, .., k_S]; per layer
``layer_counts(L, layers, counts)`` -> (L,); ranking: (H, 1, T) logits of the last row against the T tokens
present, never T x T (``prunevid.layer_pruner.score_at_layer``, SDPA keeps running). The shared
``LayerPruner`` carries the cuts out (``CutPlan`` of ``at="input"`` cuts, ``cache="own"``).

Kit adaptations (``docs/fidelity.md``): kept tokens keep their original RoPE positions (upstream re-numbers
0..T'-1 after each drop and shifts the decode positions per stage; the kit's position rule for every in-LLM cut),
so step 1's RoPE uses the original positions; upstream's per-layer KV caches are kept (each layer caches the
tokens it ran on; the final KV ratio is ``k_S / N``); counts use the kit's float-robust floor
(``count_for_ratio``); LLaVA-OneVision's image-newline after the video counts as text (never dropped).

Defaults tied to depth: ``layer_list`` (8, 16, 24) as released (LLaVA-1.5/NeXT-7B, 32 layers; on the 28 of
LLaVA-OneVision-7B they stay). On a model where one of them is beyond the depth they are spread evenly
(``prunevid.methods.resolve.depth_rule``: floor(L s / 4) -> 6/12/18 on 24 layers, 1/2/3 on the tiny 4).

Matched budget ``retain``: the visual tokens per decoder layer averaged over the prefill, over the N in (what
the prefill FLOPs follow): ``lam`` is solved per video (``lambda_for_budget``: the largest lam whose mean is at
or below ``retain``, with the counts as the prefill makes them). The first l_1 layers always run on every token,
so a budget below ``l_1 / L`` (plus what the last stages keep) is unreachable: reported (``info["budget"]``),
and the smallest lam that keeps one token at the last stage is used. ``info["pdrop"]`` holds ``lam``, the stage
counts, the per-layer mean ratio and the final KV ratio of every prefill.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Sequence, Tuple

from ..config import _check_number
from ..layer_pruner import CutPlan, LayerCut
from ..prune import count_for_ratio
from .base import ConfigMixin, LayerSchedule, Method, SequenceLayout

DEFAULT_LAYERS = (8, 16, 24)


def parse_layers(value) -> Tuple[int, ...]:
    """``layer_list`` from a sequence of ints or a string (``"8,16,24"``, ``"[8, 16, 24]"``: the ``--set`` form)."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,\[\]()]+", value) if p]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"layer_list must be layer indices such as 8,16,24, got {value!r}") from None
    try:
        layers = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"layer_list must be a sequence of layer indices, got {value!r}") from None
    if any(isinstance(v, bool) or int(v) != v for v in value):
        raise ValueError(f"layer_list must hold integers, got {value!r}")
    if not layers:
        raise ValueError("layer_list needs at least one layer")
    if layers[0] < 1 or any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layer_list must be strictly increasing layer indices >= 1 (the layers after which "
                         f"tokens are dropped), got {list(layers)}")
    return layers


@dataclass
class PDropConfig(ConfigMixin):
    """``layer_list``: the cut layers (0-indexed: the tokens are dropped at the input of these layers, i.e. after
    that many layers ran; None: resolved from the model, (8, 16, 24) or spread evenly on shallower models);
    ``lam``: the share kept at each stage of the previous stage's count (upstream's ratio list = lam^1..S;
    1.0 = no-op); ``retain``: the matched budget (visual tokens per layer averaged over the prefill / visual tokens
    in), which overrides ``lam`` (solved per video)."""

    layer_list: Optional[Tuple[int, ...]] = None
    lam: float = 0.5
    retain: Optional[float] = None

    layer_fields: ClassVar[dict] = {"layer_list": DEFAULT_LAYERS}

    def __post_init__(self):
        if self.layer_list is not None:
            self.layer_list = parse_layers(self.layer_list)
        self.lam = _check_number("lam", self.lam, 0.0, 1.0, lo_open=True)
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)


def stage_counts(n: float, lam: float, n_stages: int) -> list:
    """[N, k_1, .., k_S]: the visual tokens of each stage, ``k_s = int(N lam^s)`` (upstream:
    ``int(image_tokens * image_token_ratio_list[s])``, relative to the N in; ``count_for_ratio``'s robust floor).
    A fractional N (an average over videos) gives the unrounded ``N lam^s``."""
    if float(n).is_integer():
        return [int(n)] + [count_for_ratio(lam ** s, int(n)) for s in range(1, n_stages + 1)]
    return [n] + [n * lam ** s for s in range(1, n_stages + 1)]


def layer_counts(n_layers: int, layers: Sequence[int], counts: Sequence[float]) -> list:
    """(n_layers,) visual tokens each decoder layer runs on: ``counts[s]`` from layer ``layers[s-1]`` (0 for s=0)
    up to the next cut layer."""
    bounds = [0, *layers, n_layers]
    out = []
    for s, c in enumerate(counts):
        out += [c] * (bounds[s + 1] - bounds[s])
    return out


def layer_mean_ratio(n_layers: int, layers: Sequence[int], lam: float, n: float) -> float:
    """The visual tokens per layer averaged over the prefill, over the ``n`` in, at ``lam``."""
    counts = stage_counts(n, lam, len(layers))
    return sum(layer_counts(n_layers, layers, counts)) / (n_layers * n)


def smallest_lambda(n: float, n_stages: int) -> float:
    """The smallest lam whose last stage keeps one token: ``(1/n)^(1/S)`` (nudged up past float error)."""
    lam = (1.0 / n) ** (1.0 / n_stages)
    while stage_counts(n, lam, n_stages)[-1] < 1 - 1e-9 and lam < 1.0:
        lam = min(1.0, lam * (1 + 1e-12) + 1e-15)
    return lam


def lambda_for_budget(n_layers: int, layers: Sequence[int], n: float, retain: float) -> tuple:
    """(lam, mean ratio, reachable): the largest lam in [``smallest_lambda``, 1] whose per-layer mean
    (``layer_mean_ratio``, the counts as the prefill makes them) is at or below ``retain``, by bisection (the mean
    is non-decreasing in lam). Unreachable (the smallest lam already averages more): that lam, ``False``."""
    if retain >= 1.0 or n <= 0:
        return 1.0, 1.0, True
    lo = smallest_lambda(n, len(layers))
    floor = layer_mean_ratio(n_layers, layers, lo, n)
    if floor > retain + 1e-12:
        return lo, floor, False
    hi = 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if layer_mean_ratio(n_layers, layers, mid, n) <= retain + 1e-12:
            lo = mid
        else:
            hi = mid
    return lo, layer_mean_ratio(n_layers, layers, lo, n), True


class PDropMethod(Method):
    name = "pdrop"
    budget_measure = "layer_average"        # retain: visual tokens per decoder layer, averaged over the prefill
    config_class = PDropConfig

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return cfg.retain < 1.0 if cfg.retain is not None else cfg.lam < 1.0

    def _layers(self, n_layers: int) -> Tuple[int, ...]:
        layers = self.config.layer_list or DEFAULT_LAYERS
        if layers[-1] >= n_layers:
            raise ValueError(f"PyramidDrop layer_list={list(layers)} is beyond the language model's depth: it has "
                             f"{n_layers} decoder layers (cut layers must be in 1..{n_layers - 1})")
        return layers

    def validate(self, num_layers: int) -> None:
        self._layers(num_layers)

    def _lambda(self, n_layers: int, layers: Sequence[int], n: float) -> tuple:
        """(lam, budget record or None) for ``n`` visual tokens in."""
        cfg = self.config
        if cfg.retain is None:
            return cfg.lam, None
        lam, mean, ok = lambda_for_budget(n_layers, layers, n, cfg.retain)
        note = None if ok else (
            f"pdrop cannot average fewer than {mean:.3f} of the visual tokens per layer here: decoder layers "
            f"0..{layers[0] - 1} run on all of them before the first cut (layer_list={list(layers)}); ran at "
            f"lam={lam:.4g}, one token kept at the last stage")
        return lam, {"target_ratio": cfg.retain, "lam": lam, "expected_ratio": mean, "reachable": ok, "note": note}

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        return n_visual if given is None else given            # PyramidDrop prunes inside the LLM only

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """Layers 0..l_1-1 on every visual token, l_s..l_{s+1}-1 on ``int(N lam^s)``; every layer's cache holds the
        tokens it ran on (upstream's per-layer caches). The settings fix every stage's count (``lam``, or solved
        from ``retain``); ``kept`` is not needed and not read."""
        n = self.entering(n_visual, entering)
        if not self.enabled:
            return LayerSchedule([n] * n_layers, [n] * n_layers)
        layers = self._layers(n_layers)
        lam, _ = self._lambda(n_layers, layers, n)
        tokens = layer_counts(n_layers, layers, stage_counts(n, lam, len(layers)))
        return LayerSchedule(tokens, list(tokens))

    def plan(self, layout: SequenceLayout) -> CutPlan:
        n, n_layers = layout.visual_len, layout.num_layers
        layers = self._layers(n_layers)
        lam, budget = self._lambda(n_layers, layers, n)
        counts = stage_counts(n, lam, len(layers))
        cuts: List[LayerCut] = [LayerCut(layer=layer, n_keep=c, at="input", scoring="rope_causal", query="last",
                                         reduce="mean") for layer, c in zip(layers, counts[1:])]
        per_layer = layer_counts(n_layers, layers, counts)
        record = {"lam": lam, "layer_list": list(layers), "stage_tokens": counts,
                  "layer_mean_ratio": sum(per_layer) / (n_layers * n) if n else None,
                  "final_kv_ratio": counts[-1] / n if n else None}
        if layout.reduction is not None:                 # what patch.info reports after the prefill
            layout.reduction.info["pdrop"] = record
            if budget is not None:
                layout.reduction.info["budget"] = budget
        return CutPlan(seq_len=layout.seq_len, visual_start=layout.visual_start, visual_len=layout.visual_len,
                       query_start=layout.query_start, cuts=cuts, cache="own")
