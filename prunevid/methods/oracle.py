"""``oracle``: keep the tokens that cover the objects the generator placed — the ceiling for token selection on the
synthetic benchmark (a kit reference, not a method from a paper).

The caller gives the ground truth as a hint (``prunevid.state.set_hints(model, object_masks=...)``; the runner does
it on the synthetic benchmark, ``Benchmark.hints``): ``object_masks`` (F, H, W) float in [0, 1], the share of each
frame pixel covered by the objects the generator placed (clutter is background). The masks are pooled to the
token grid (adaptive average pooling: the (F, P) share of each token's cell that objects cover) and
``max(1, floor(retain x F x P))`` tokens are kept: every covered token first, most covered first, then background
tokens; ties (equal coverage, and the whole background) in an order drawn from a generator seeded with ``seed``
at every prefill. Kept tokens enter the LLM in frame-major raster order, as random keep's.

``focus="question"`` (an option; the default ``"objects"`` is the rule above, issue 24's) ranks by what the
question is about, from a second hint, ``question_masks`` (F, H, W): the pixels of the objects the question asks
about, or for a question about the scenes every pixel no object covers (the version-2 synthetic benchmark gives
it, ``prunevid.synthetic.question_pixels``; the rule reads the task, never the answer). Tokens touching those
pixels come first (most covered first), then the other object tokens, then the rest: a tighter ceiling where the
object-first rule throws away what is asked about (the background of a scene change) or spends the budget on
objects the question does not name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import _check_int, _check_number, check_positions
from ..prune import count_for_ratio
from .base import ConfigMixin, Method, Reduction, VideoContext, frames_reduction

HINT = "object_masks"
QUESTION_HINT = "question_masks"
FOCUSES = ("objects", "question")
MISSING_HINT = ("oracle needs the hint object_masks (the generator's object masks, (F, H, W) in [0, 1]): run it on "
                "the synthetic benchmark through the runner, or give it with "
                "prunevid.state.set_hints(model, object_masks=...)")
MISSING_QUESTION_HINT = ("oracle with focus='question' needs the hint question_masks (the pixels the question is about, "
                         "(F, H, W) in [0, 1]): the version-2 and version-3 synthetic benchmarks (synthetic-v2, "
                         "synthetic-v3 and their -val splits) give it through the runner, or give it with "
                         "prunevid.state.set_hints(model, question_masks=...)")


@dataclass
class OracleConfig(ConfigMixin):
    """``retain``: kept share of the visual tokens (1.0 = no-op); ``seed``: orders ties and the background
    (None = torch's global RNG); ``positions``: ``"renumber"`` (default, as the pre-LLM baselines do) or
    ``"original"`` (kept tokens keep their RoPE positions; see ``PruneVidConfig``); ``focus``: ``"objects"``
    (default: every object token first) or ``"question"`` (the tokens the question is about first, then the
    other object tokens; needs the ``question_masks`` hint)."""

    retain: float = 0.25
    seed: Optional[int] = 0
    positions: str = "renumber"
    focus: str = "objects"

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0)
        self.positions = check_positions(self.positions)
        if self.focus not in FOCUSES:
            raise ValueError(f"oracle: focus must be one of {', '.join(FOCUSES)}, got {self.focus!r}")


def oracle_keep(coverage: torch.Tensor, n_keep: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The oracle's selection.

    ``coverage`` (F, P) float: the share of each token's cell that objects cover (0 = background);
    ``n_keep`` in [1, F x P]; ``generator``: draws the order of ties and of the background (CPU).
    Returns (F, P) bool with exactly ``n_keep`` True: the covered tokens by coverage, highest first, then
    background tokens, each tie group in a seeded random order.
    """
    if coverage.dim() != 2:
        raise ValueError(f"coverage must be (F, P), got shape {tuple(coverage.shape)}")
    n = coverage.numel()
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    flat = coverage.detach().reshape(-1).to("cpu", torch.float32)
    perm = torch.randperm(n, generator=generator)                       # the random order of ties
    order = torch.sort(flat[perm], descending=True, stable=True).indices
    kept = torch.zeros(n, dtype=torch.bool)
    kept[perm[order[:n_keep]]] = True
    return kept.view_as(coverage).to(coverage.device)


def question_score(question: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """The ``focus="question"`` ranking key, for :func:`oracle_keep`.

    ``question`` (F, P): the share of each token's cell the question's pixels cover; ``objects`` (F, P): the
    share all objects cover. Returns (F, P) float: ``2 + question`` where the token touches the question's
    pixels (most covered first), else ``objects`` (in [0, 1]): so every question token ranks above every other
    object token, and those above the bare background (0)."""
    if question.shape != objects.shape or question.dim() != 2:
        raise ValueError(f"question and objects must both be (F, P), got {tuple(question.shape)} and "
                         f"{tuple(objects.shape)}")
    return torch.where(question > 0, 2.0 + question, objects)


def pooled_coverage(masks: torch.Tensor, grid) -> torch.Tensor:
    """(F, H, W) pixel masks in [0, 1] -> (F, h x w) share of each token cell covered (adaptive average pooling
    to the ``grid`` = (h, w) of the visual tokens, raster order inside a frame)."""
    h, w = int(grid[0]), int(grid[1])
    pooled = torch.nn.functional.adaptive_avg_pool2d(masks[:, None].float(), (h, w))
    return pooled[:, 0].reshape(masks.shape[0], h * w)


class OracleMethod(Method):
    name = "oracle"
    config_class = OracleConfig

    @property
    def needs_hints(self) -> tuple:
        return (HINT, QUESTION_HINT) if self.config.focus == "question" else (HINT,)

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext) -> Reduction:
        masks = video.hints.get(HINT)
        if masks is None:
            raise ValueError(MISSING_HINT)
        masks = torch.as_tensor(masks).detach().to("cpu", torch.float32)
        f, p = video.frames.shape[:2]
        if masks.dim() != 3:
            raise ValueError(f"oracle: object_masks must be (F, H, W), got shape {tuple(masks.shape)}")
        if masks.shape[0] != f:
            raise ValueError(f"oracle: object_masks has {masks.shape[0]} frames but the video has {f}: give one "
                             f"mask per frame the model sees (the same frame sampling)")
        if int(video.grid[0]) * int(video.grid[1]) != p:
            raise ValueError(f"oracle: the token grid {tuple(video.grid)} does not hold the {p} tokens of a frame")
        cover = pooled_coverage(masks, video.grid)
        score = cover
        if self.config.focus == "question":
            question = video.hints.get(QUESTION_HINT)
            if question is None:
                raise ValueError(MISSING_QUESTION_HINT)
            question = torch.as_tensor(question).detach().to("cpu", torch.float32)
            if question.shape != masks.shape:
                raise ValueError(f"oracle: question_masks has shape {tuple(question.shape)}, object_masks "
                                 f"{tuple(masks.shape)}: give both for the same frames")
            score = question_score(pooled_coverage(question, video.grid), cover)
        kept = oracle_keep(score, max(1, count_for_ratio(self.config.retain, f * p)), video.generator)
        info = {"covered_tokens": int((cover > 0).sum()), "kept_covered": int((kept & (cover > 0)).sum())}
        return frames_reduction(video.frames, kept.to(video.frames.device), info)
