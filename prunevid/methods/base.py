"""The interface between a model file and a method.

A model file (``prunevid/models/<arch>.py``) owns everything model-specific: where the frame features come
from, how the prompt marks them, which modules are the decoder layers. A method owns the token rule, as pure
tensor functions plus three optional answers the model file asks for at the prefill that carries a video:

1. ``reduce(video) -> Reduction | None`` — pre-LLM: the visual tokens that enter the LLM (kept or merged),
   from ``VideoContext`` (frame features (F, P, C), the per-frame grid, — only when the method sets
   ``needs_vision_attention`` — the vision tower's last-layer importance (F, P) and keys (F, P, Dk) pooled to
   the same grid, and the ``hints``: ground truth a caller gave for this call, ``prunevid.state.set_hints``, such
   as the oracle's object masks; a method names those it reads in ``needs_hints``; and ``frame_embedding`` where
   the method brings a vision head of its own, ``vision_head``: FastVID's SigLIP pooling head, run by the model
   file's vision probe on the feature layer's output). ``None`` = the frames enter unchanged.
2. ``plan(layout) -> Stage2Plan | CutPlan | None`` — in-LLM pruning (one cut, or several: PyramidDrop), carried
   out by the shared ``LayerPruner``.
3. ``cache_policy(layout) -> CachePolicy | None`` — post-prefill / decode-time KV-cache behaviour, run by the
   same hooks.

A method also declares its layer schedule (``schedule``): the visual tokens each decoder layer runs on and keeps
in its KV cache, for the analytic presets that run no prefill. A prefill records the same two lists as they
happened (``stats["layer_tokens"]``, ``stats["layer_kv_tokens"]``); FLOPs, ideal speed-ups and budgets read the
record when there was a prefill and the schedule otherwise.

``enabled`` False means the method is a no-op at its settings: the model file then runs the unpatched
forward (bit-identical outputs). ``prunes`` says whether the method claims to remove tokens anywhere (the
divergence check holds it to that claim).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch


class ConfigMixin:
    """``replace`` / ``to_dict`` for the methods' config dataclasses."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class VideoContext:
    """What a pre-LLM reduction sees for one video (batch size 1)."""

    frames: torch.Tensor                               # (F, P, C) visual tokens in LLM embedding space
    grid: Tuple[int, int]                              # (h, w) with h * w = P, raster order inside a frame
    generator: Optional[torch.Generator] = None        # seeded per prefill where the config has a seed
    importance: Optional[torch.Tensor] = None          # (F, P) attention each patch receives (vision tower)
    keys: Optional[torch.Tensor] = None                # (F, P, Dk) vision keys, pooled: as the method asks
                                                       # (VisionZip: mean over heads; PruMerge: full key vectors)
    hints: dict = field(default_factory=dict)          # ground truth the caller gave (``prunevid.state.set_hints``):
                                                       # what a method declares in ``needs_hints`` (oracle: masks)
    frame_embedding: Optional[torch.Tensor] = None     # (F, D') one vector per frame from a method's own vision head
                                                       # (``Method.vision_head``: FastVID's SigLIP pooling head)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        return int(self.frames.shape[1])


@dataclass
class Reduction:
    """Output of a pre-LLM reduction.

    ``tokens`` (N, C) enter the LLM in this order. The group sizes (PruneVid's static / dynamic / window
    per segment) are optional; a grouped in-LLM selection needs them. ``kept`` (F, P) bool marks the input
    tokens that survive as themselves (selection methods; VisionZip: its dominant tokens; PruMerge: the merge
    centres), for drawing what a method keeps (``prunevid.methods.kept_map``); ``info``
    holds method-specific extras (PruneVid's ``MergeResult`` under ``"merge"``, budgets, counts).
    """

    tokens: torch.Tensor
    static_sizes: Optional[List[int]] = None
    dynamic_sizes: Optional[List[int]] = None
    window_sizes: Optional[List[int]] = None
    kept: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class SequenceLayout:
    """The LLM input of the prefill, after any pre-LLM reduction (batch size 1)."""

    seq_len: int
    visual_start: int
    visual_len: int
    query_start: int                                   # first position after the visual tokens + newline
    num_layers: int
    num_frames: int
    visual_tokens_in: int
    reduction: Optional[Reduction] = None

    @property
    def visual(self) -> slice:
        return slice(self.visual_start, self.visual_start + self.visual_len)


@dataclass
class LayerSchedule:
    """Visual tokens per decoder layer of one prefill: ``tokens[i]`` the layer runs on, ``kv[i]`` its KV cache
    holds when the prefill ends. Fractional where a count is an expectation (ratios averaged over videos)."""

    tokens: List[float]
    kv: List[float]


class Method:
    """Base class: a no-op. Subclasses set ``name``, ``config_class`` and override what they use."""

    name: str = "none"
    config_class: type = None
    needs_vision_attention: bool = False
    needs_hints: tuple = ()                # ground truth the method reads from ``VideoContext.hints`` (``oracle``:
                                           # ``"object_masks"``); the runner asks the benchmark for them
    # What a matched budget (``retain``) is met on, read from a prefill's stats (``budget_ratio``):
    # "retained_ratio" (visual tokens after the method's last cut / visual tokens in), "layer_average" (the visual
    # tokens each decoder layer ran on, averaged over the layers / visual tokens in: methods that cut at several
    # layers, the quantity their FLOPs follow), "kv" (visual KV-cache entries / visual tokens in: cache methods).
    budget_measure: str = "retained_ratio"

    def __init__(self, config):
        from .resolve import resolve
        self.config = resolve(config)          # a layer field left None (no model to ask): the method's default
        self.info: dict = {}

    # -- properties the patch and the checks read ----------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return False

    @property
    def prunes(self) -> bool:
        return self.enabled

    def validate(self, num_layers: int) -> None:
        """Raise ``ValueError`` when the settings do not fit a language model of ``num_layers`` layers."""

    # -- the three questions the model file asks -----------------------------------------------------------
    def reduce(self, video: VideoContext) -> Optional[Reduction]:
        return None

    def plan(self, layout: SequenceLayout):
        return None

    def cache_policy(self, layout: SequenceLayout):
        return None

    # -- the declared layer schedule -----------------------------------------------------------------------
    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """The visual tokens each of ``n_layers`` decoder layers runs on and caches, for ``n_visual`` visual and
        ``n_text`` text tokens in. ``entering`` (tokens entering the LLM) and ``kept`` (after an in-LLM cut, or
        the KV budget of a cache method) are the counts a video decides; a method fills what its settings
        decide alone (a ``retain`` budget) and asks for the rest. This base: every layer on what enters."""
        e = self.entering(n_visual, entering)
        return LayerSchedule([e] * n_layers, [e] * n_layers)

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        """The visual tokens entering the LLM: ``given``, else what the settings fix (all of them for a no-op,
        ``retain x n_visual`` for a budget), else a ``ValueError`` (the count depends on the video)."""
        if given is not None:
            return given
        if not self.enabled:
            return n_visual
        retain = getattr(self.config, "retain", None)
        if retain is not None:
            return retain * n_visual
        raise ValueError(f"{self.name}: the visual tokens entering the LLM depend on the video at these settings; "
                         f"give the count (entering=, the CLI's --retained)")


def frames_reduction(frames: torch.Tensor, kept: torch.Tensor, info: Optional[dict] = None) -> Reduction:
    """A selection-only reduction: (F, P, C) frames and (F, P) bool kept -> tokens in frame-major, raster order."""
    return Reduction(tokens=frames[kept], kept=kept, info=dict(info or {}))


def budget_ratio(measure: str, stats: dict):
    """The achieved ratio of a prefill's ``stats`` under a method's ``budget_measure`` (None when unknown)."""
    n_in = stats.get("visual_tokens_in")
    if not n_in:
        return None
    if measure == "kv":
        kv = stats.get("kv_visual_tokens")
        return None if kv is None else kv / n_in
    if measure == "layer_average":
        layers = stats.get("layer_tokens")
        return sum(layers) / (len(layers) * n_in) if layers else None
    if measure == "retained_ratio":
        return stats.get("retained_ratio")
    raise ValueError(f"unknown budget measure {measure!r}")
