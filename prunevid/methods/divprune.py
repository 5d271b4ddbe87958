"""``divprune``: DivPrune (Alvar et al., CVPR'25) — the most diverse subset of the visual tokens, before the LLM.

Upstream: vbdi/divprune ``LLaVA/llava/model/llava_arch.py`` (``pairwise_cosine_similarity``, ``DivPrune``, the call
in ``prepare_inputs_labels_for_multimodal`` under ``LAYER_INDEX=0``; ``run_Divprune.sh``: ``SUBSET_RATIO=0.098``).
Selection as a Max-Min Diversity Problem, solved greedily (farthest-point sampling) on the projected visual
tokens (the LLM-embedding-space features), attention-free:

1. distances ``D = 1 - cos`` between every pair of the N visual tokens (``cosine_distances``: (N, C) -> (N, N));
2. k = ``int(round(retain x N))`` (Python's round, half to even; at least 1);
3. seed: the token whose nearest other token is farthest — per column the second-smallest entry of D (the
   smallest is its own, 0), argmax (``torch.topk(m2, 2, dim=0, largest=False).values[1, :]``);
4. then k - 1 times: the token whose smallest distance to the tokens chosen so far is largest (``min`` over the
   chosen rows, argmax; the first index on ties);
5. the chosen tokens enter the LLM in their original order (``keep_indexs.sort()``).

Where it runs on a video: upstream selects over all the visual tokens of its input at once (LLaVA-1.5's 576,
LLaVA-1.6's tiles together); the kit does the same over the whole video, the F x P tokens of every frame
together (``divprune_keep``), so the kept count per frame follows the content. Shapes: frames (F, P, C) ->
(F x P, C) -> D (N, N) float32 -> kept (F, P) bool.

Kit adaptations (``docs/fidelity.md``): the distances are computed in float32 (upstream: the model dtype); the
greedy step never picks a token twice (upstream's argmax could, only when every remaining token duplicates a
chosen one); the running minimum replaces upstream's re-reduction over the chosen rows at every step (the same
values); LLaVA-OneVision's image-newline after the video is not a candidate (the kit never prunes it; upstream
LLaVA-1.6's per-row newlines were candidates). Memory: D is N x N (32 frames x 196 = 6272 tokens: 157 MB).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import _check_number, check_positions
from .base import ConfigMixin, Method, Reduction, VideoContext, frames_reduction


@dataclass
class DivPruneConfig(ConfigMixin):
    """``retain``: share of the visual tokens kept, ``int(round(retain x N))`` over the whole video (upstream's
    ``SUBSET_RATIO``, 0.098; 1.0 = no-op); ``positions``: ``"renumber"`` (default, as upstream: the kept tokens
    take the positions of the shortened sequence) or ``"original"`` (see ``PruneVidConfig``)."""

    retain: float = 0.098
    positions: str = "renumber"

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        self.positions = check_positions(self.positions)


def divprune_count(retain: float, n: int) -> int:
    """Tokens DivPrune keeps of ``n``: ``int(round(retain x n))`` (upstream's ``threshold_terms``), at least 1."""
    return min(n, max(1, int(round(retain * n))))


def cosine_distances(tokens: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, N) float32 ``1 - cos(x_i, x_j)`` (upstream's ``1.0 - pairwise_cosine_similarity``)."""
    x = F.normalize(tokens.float(), dim=-1)
    return 1.0 - x @ x.T


def divprune_order(dist: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N) distances -> (k,) token indices in the order the greedy max-min rule picks them (seed first)."""
    n = dist.shape[0]
    k = max(0, min(int(k), n))
    order = torch.empty(k, dtype=torch.long, device=dist.device)
    if k == 0:
        return order
    if n == 1:
        order[0] = 0
        return order
    seed_scores = dist.topk(2, dim=0, largest=False).values[1]          # each token's nearest other token
    order[0] = seed_scores.argmax()
    nearest = dist[order[0]].clone()                                    # distance to the chosen set, per token
    chosen = torch.zeros(n, dtype=torch.bool, device=dist.device)
    chosen[order[0]] = True
    for i in range(1, k):                                               # tensor indices: no host sync per step
        pick = nearest.masked_fill(chosen, float("-inf")).argmax().view(1)
        order[i:i + 1] = pick
        chosen.index_fill_(0, pick, True)
        nearest = torch.minimum(nearest, dist.index_select(0, pick)[0])
    return order


def divprune_keep(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) tokens -> (k,) sorted indices of the max-min diverse subset (``divprune_order`` on
    ``cosine_distances``)."""
    if k >= tokens.shape[0]:
        return torch.arange(tokens.shape[0], device=tokens.device)
    return divprune_order(cosine_distances(tokens), k).sort().values


class DivPruneMethod(Method):
    name = "divprune"
    config_class = DivPruneConfig

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext) -> Reduction:
        frames = video.frames
        f, p = frames.shape[:2]
        k = divprune_count(self.config.retain, f * p)
        idx = divprune_keep(frames.reshape(f * p, -1), k)
        kept = torch.zeros(f * p, dtype=torch.bool, device=frames.device)
        kept[idx.to(frames.device)] = True
        return frames_reduction(frames, kept.view(f, p), {"kept_per_frame": kept.view(f, p).sum(1).tolist()})

    def entering(self, n_visual: float, given=None) -> float:
        """``int(round(retain x N))`` for a whole count, ``retain x N`` for a fractional one (an average)."""
        if given is not None:
            return given
        if not self.enabled:
            return n_visual
        if float(n_visual).is_integer():
            return divprune_count(self.config.retain, int(n_visual))
        return self.config.retain * n_visual
