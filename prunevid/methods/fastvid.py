"""``fastvid``: FastVID (Shen et al., NeurIPS'25) — segment the video, keep salient tokens, merge the rest into
density-chosen anchors; before the first decoder layer (the kit: a pre-LLM reduction).

Transcribed from the authors' code, LunarShen/FastVID (read at HEAD a40a109; no line of it is copied here):
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` (``Qwen2Model.forward``, the
block "FastVID": DySeg, STPrune, density scores, DTM), ``llava/model/llava_arch.py`` (``encode_images``,
``get_attn_2dPool``), ``llava/model/multimodal_encoder/siglip_encoder.py`` (``SigLipVisionAbstract``,
``SigLipMultiheadAttentionPoolingHead``). Defaults: ``fastvid_llavaonevision/scripts/eval.sh``
(``retention_ratio`` 0.10, DySeg c 8, tau 0.9, STPrune d 0.4, DTM p 4, beta 0.6).

Signals. Upstream re-attaches google/siglip-so400m-patch14-384's ``post_layernorm`` and attention-pooling head
to the penultimate SigLIP features (the ones the projector reads) of every frame: the head's pooled output is
the **frame embedding** (F, D), its probe's attention over the 729 patches (mean over heads) the **saliency**,
bilinearly pooled to the 14 x 14 token grid like the features. The kit loads that head from ``pooling_head``
(a path: a SigLIP checkpoint directory or a weights file, ``load_pooling_head``) and runs it on the feature
layer's output (``prunevid.models.video_patch``: the probe calls ``Method.vision_head``). Without it (the
LLaVA-OneVision towers, and the demo and tiny models, carry no head), the named fallback ``"feature_mean"``:
frame embedding = the mean of the frame's projected tokens (F, P, C); saliency = the feature layer's attention
each patch receives (SigLIP: mean over heads and queries, HoliTom's VisionZip port; CLIP towers: the CLS row,
heads summed), pooled to the grid by the model (``VideoContext.importance``).

The rule (F frames of P tokens, C channels; ``retain`` = r):

1. **DySeg** (``dyseg_segments``): s_i = cos(e_i, e_{i+1}) of adjacent frame embeddings (i = 0..F-2); cut after
   frame i for the c - 1 smallest s_i and for every s_i < tau; segments are the runs between cuts.
2. **Counts**: n = int(P r) per frame; salient ``n_s = n - int(n d)``; context ``n_c = n - n_s``
   (``stprune_counts``). Per segment of L frames the anchor frames are every p-th counting back from its last
   frame; each holds ``n_c L // ceil(L / p)`` anchors, the others none (``anchor_counts``): a frame with exactly
   ``n_c`` runs the single-frame merge, one with more the multi-frame merge of its segment.
3. **ATS** (salient): the top ``n_s`` tokens of each frame by saliency.
4. **Density** (``density_scores``), per frame over its M = P - n_s other tokens: D = cdist / sqrt(C) (float32);
   rho = exp(-mean of the squared distances to the 4 nearest, itself included) + U(0, 1e-6) tie noise;
   delta = distance to the nearest token of higher rho (max of D for the densest); score = delta x rho.
5. **DTM** (``dtm_merge``): anchors = top-score tokens; every candidate token is assigned to its most cosine-
   similar anchor (argmax, each anchor assigned to itself); anchor <- w a + (1 - w) mean(assigned), with
   w = max(1 / (count + 1), beta). Single-frame: a frame's M tokens into its own n_c anchors. Multi-frame: each
   anchor frame of a segment takes its top-score anchors among its own M tokens, and **all** L x M non-salient
   tokens of the segment are assigned to them (each anchor frame independently).
6. Kept: salient tokens and the merged anchors, in their original (frame, raster) order; each keeps its
   original RoPE position (upstream: ``position_ids = keep_indexs``), decoding continues from the unreduced
   length; text, the image-newline included, untouched.

Kit adaptations (``docs/fidelity.md``): the fallback signals above when no head is given; ``positions`` default
``"original"`` as upstream, ``"renumber"`` available; c - 1 is capped at F - 1 and the kNN at M (upstream's
``topk`` fails on fewer frames / tokens); a frame's anchor count is capped at M (upstream fails when
n_c L // ceil(L/p) > M, at retain above ~0.4); counts use the kit's float-robust floor (``count_for_ratio``);
the merge's sums and weighted averages run in float32, cast back (upstream: the model dtype); the tie noise
draws from the prefill's seeded generator (``seed``; upstream: the global RNG); ``retain = 1`` is the no-op
(the unpatched model). Matched budget: ``retain`` is FastVID's own knob (``retention_ratio``); the achieved
ratio (``stats["retained_ratio"]``) is at most ``int(P r) / P`` (fewer where a multi-frame segment's
``n_c L // ceil(L / p)`` rounds down).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import _check_int, _check_number, check_positions
from ..prune import count_for_ratio
from .base import ConfigMixin, Method, Reduction, VideoContext

FALLBACK = "feature_mean"          # the named fallback for the frame embedding and the saliency (module doc)


@dataclass
class FastVIDConfig(ConfigMixin):
    """``retain``: upstream's ``retention_ratio`` (0.10; 1.0 = no-op); ``c`` / ``tau``: DySeg's segment count and
    similarity threshold; ``d``: STPrune's share of anchor (context) tokens; ``p``: DTM's anchor-frame stride;
    ``beta``: DTM's least anchor weight; ``pooling_head``: path of SigLIP's post-layernorm + attention-pooling
    head weights (None: the ``"feature_mean"`` fallback); ``knn``: neighbours of the density (4, a constant
    upstream); ``seed``: the density tie noise; ``positions``: ``"original"`` (upstream) or ``"renumber"``."""

    retain: float = 0.10
    c: int = 8
    tau: float = 0.9
    d: float = 0.4
    p: int = 4
    beta: float = 0.6
    pooling_head: Optional[str] = None
    knn: int = 4
    seed: Optional[int] = 0
    positions: str = "original"

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        self.c = _check_int("c", self.c, 1)
        self.tau = _check_number("tau", self.tau, -1.0, 1.0)
        self.d = _check_number("d", self.d, 0.0, 1.0)
        self.p = _check_int("p", self.p, 1)
        self.beta = _check_number("beta", self.beta, 0.0, 1.0)
        self.knn = _check_int("knn", self.knn, 1)
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0)
        if self.pooling_head is not None:
            if not isinstance(self.pooling_head, (str, os.PathLike)) or not os.path.exists(self.pooling_head):
                raise ValueError(f"pooling_head must be the path of SigLIP's pooling-head weights (a checkpoint "
                                 f"directory or a .safetensors / .pt file), got {self.pooling_head!r}: not found")
            self.pooling_head = os.fspath(self.pooling_head)
        self.positions = check_positions(self.positions)


# ------------------------------------------------------------------------------------------ the kernel steps
def dyseg_segments(frame_embedding: torch.Tensor, c: int, tau: float) -> List[int]:
    """(F, D) frame embeddings -> segment lengths (sum F): cut after frame i for the ``c - 1`` smallest adjacent
    cosine similarities (at most F - 1) and every one below ``tau``."""
    n = frame_embedding.shape[0]
    if n < 2:
        return [n]
    e = F.normalize(frame_embedding.float(), dim=-1)
    sim = (e[:-1] * e[1:]).sum(-1)                                              # (F-1,)
    top = torch.topk(sim, min(c - 1, n - 1), largest=False).indices
    cuts = torch.unique(torch.cat([top, (sim < tau).nonzero().squeeze(1)])).sort().values.tolist()
    bounds = [-1, *cuts, n - 1]
    return [b - a for a, b in zip(bounds, bounds[1:]) if b > a]


def stprune_counts(tokens_per_frame: int, retain: float, d: float) -> Tuple[int, int]:
    """(salient, context) tokens per frame: n = int(P r), ``n - int(n d)`` salient, ``int(n d)`` context."""
    n = count_for_ratio(retain, tokens_per_frame)
    salient = n - int(n * d)
    return salient, n - salient


def anchor_counts(segment_sizes: List[int], context: int, p: int) -> torch.Tensor:
    """(F,) long anchors each frame holds: per segment of L frames, ``context x L // ceil(L / p)`` on every p-th
    frame counting back from its last frame, 0 on the others."""
    out = []
    for length in segment_sizes:
        per = context * length // ((length + p - 1) // p)
        out += [per if (length - 1 - j) % p == 0 else 0 for j in range(length)]
    return torch.tensor(out, dtype=torch.long)


def density_scores(x: torch.Tensor, knn: int = 4, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, M, C) -> (B, M) float32 DPC score delta x rho (module doc, step 4). ``noise`` (B, M) is added to rho
    (upstream: U(0, 1e-6)); None adds nothing."""
    x = x.float()
    dist = torch.cdist(x, x) / math.sqrt(x.shape[-1])                          # (B, M, M)
    near = torch.topk(dist, min(knn, x.shape[1]), dim=-1, largest=False).values
    rho = (-(near ** 2).mean(-1)).exp()
    if noise is not None:
        rho = rho + noise.to(rho)
    higher = rho[:, None, :] > rho[:, :, None]                                  # [b, i, j]: rho_j > rho_i
    dmax = dist.flatten(1).max(-1).values[:, None, None]
    delta = torch.where(higher, dist, dmax).min(-1).values
    return delta * rho


def dtm_merge(anchors: torch.Tensor, tokens: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, K, C) anchors, (B, M, C) tokens (the anchors among them) -> (B, K, C): every token to its most
    cosine-similar anchor; anchor <- w a + (1 - w) mean(assigned), w = max(1 / (count + 1), beta)."""
    b, k, c = anchors.shape
    if k == 0:
        return anchors
    sim = torch.bmm(F.normalize(tokens, dim=-1), F.normalize(anchors, dim=-1).transpose(1, 2))   # (B, M, K)
    onehot = torch.zeros(b, tokens.shape[1], k, dtype=torch.float32, device=tokens.device)
    onehot.scatter_(2, sim.argmax(-1, keepdim=True), 1.0)
    count = onehot.sum(1)[..., None]                                            # (B, K, 1)
    w = (1.0 / (count + 1)).clamp(min=beta)
    mean = torch.bmm(onehot.transpose(1, 2), tokens.float()) / count.clamp(min=1)
    return (w * anchors.float() + (1 - w) * mean).to(anchors.dtype)


def fastvid_reduce(frames: torch.Tensor, saliency: torch.Tensor, frame_embedding: torch.Tensor, retain: float,
                   c: int = 8, tau: float = 0.9, d: float = 0.4, p: int = 4, beta: float = 0.6, knn: int = 4,
                   generator: Optional[torch.Generator] = None, tie_noise: bool = True):
    """(F, P, C) frames, (F, P) saliency, (F, D) frame embeddings -> (tokens (N', C) in original order,
    kept (F, P) bool, info). The whole rule of the module doc."""
    f, n_p, ch = frames.shape
    dev = frames.device
    segments = dyseg_segments(frame_embedding, c, tau)
    n_sal, n_ctx = stprune_counts(n_p, retain, d)
    counts = anchor_counts(segments, n_ctx, p)
    sal = torch.topk(saliency.float(), n_sal, dim=1).indices if n_sal else torch.zeros(f, 0, dtype=torch.long,
                                                                                        device=dev)
    rest = torch.ones(f, n_p, dtype=torch.bool, device=dev)
    rest.scatter_(1, sal.to(dev), False)
    m = n_p - n_sal
    cand = rest.nonzero()[:, 1].view(f, m)                                     # (F, M) raster locations
    tok = frames.gather(1, cand[..., None].expand(-1, -1, ch))                  # (F, M, C)
    noise = None
    if tie_noise:
        noise = torch.rand(f, m, generator=generator, device=generator.device if generator is not None else dev)
    score = density_scores(tok, knn, noise)                                     # (F, M)
    out = frames.clone()
    kept = torch.zeros(f, n_p, dtype=torch.bool, device=dev)
    kept.scatter_(1, sal.to(dev), True)
    # single-frame segments (a frame holding exactly n_c anchors)
    single = (counts == n_ctx).nonzero().squeeze(1).tolist() if n_ctx else []
    if single:
        k = min(n_ctx, m)
        idx = torch.topk(score[single], k, dim=1).indices                      # (S, k) into the candidates
        a = tok[single].gather(1, idx[..., None].expand(-1, -1, ch))
        merged = dtm_merge(a, tok[single], beta)
        for row, fr in enumerate(single):
            loc = cand[fr, idx[row]]
            out[fr, loc] = merged[row]
            kept[fr, loc] = True
    # multi-frame segments: anchor frames holding more than n_c
    start = 0
    for length in segments:
        seg = list(range(start, start + length))
        targets = [fr for fr in seg if counts[fr] > n_ctx]
        if length > 1 and targets:
            k = min(int(counts[seg[-1]]), m)
            idx = torch.topk(score[targets], k, dim=1).indices                 # (T, k)
            a = tok[targets].gather(1, idx[..., None].expand(-1, -1, ch))
            pool = tok[seg].reshape(1, length * m, ch).expand(len(targets), -1, -1)
            merged = dtm_merge(a, pool, beta)
            for row, fr in enumerate(targets):
                loc = cand[fr, idx[row]]
                out[fr, loc] = merged[row]
                kept[fr, loc] = True
        start += length
    info = {"segments": segments, "salient_per_frame": n_sal, "context_per_frame": n_ctx,
            "anchors_per_frame": counts.tolist(), "kept_per_frame": kept.sum(1).tolist()}
    return out[kept], kept, info


# ---------------------------------------------------------------------------------------- the pooling head
class SigLIPPoolingHead(nn.Module):
    """SigLIP's ``post_layernorm`` + multi-head attention-pooling head (parameter names as in the HF checkpoint's
    ``vision_model.post_layernorm.*`` / ``vision_model.head.*``). (B, Np, D) -> (pooled (B, D), attention
    (B, Np) float32: the probe's attention, mean over heads)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float = 1e-6):
        super().__init__()
        self.post_layernorm = nn.LayerNorm(dim, eps=eps)
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, hidden: torch.Tensor):
        if hidden.shape[-1] != self.probe.shape[-1]:
            raise ValueError(f"the pooling head is {self.probe.shape[-1]} wide but the vision tower's features are "
                             f"{hidden.shape[-1]}: give the head of this tower's SigLIP (so400m: 1152), or none")
        h = self.post_layernorm(hidden.to(self.probe.dtype))
        out, attn = self.attention(self.probe.expand(h.shape[0], -1, -1), h, h, need_weights=True,
                                   average_attn_weights=True)
        pooled = out + self.fc2(F.gelu(self.fc1(self.layernorm(out)), approximate="tanh"))
        return pooled[:, 0], attn[:, 0].float()


_HEAD_KEYS = {"post_layernorm.weight": "post_layernorm.weight", "post_layernorm.bias": "post_layernorm.bias",
              "head.probe": "probe", "head.attention.in_proj_weight": "attention.in_proj_weight",
              "head.attention.in_proj_bias": "attention.in_proj_bias",
              "head.attention.out_proj.weight": "attention.out_proj.weight",
              "head.attention.out_proj.bias": "attention.out_proj.bias", "head.layernorm.weight": "layernorm.weight",
              "head.layernorm.bias": "layernorm.bias", "head.mlp.fc1.weight": "fc1.weight",
              "head.mlp.fc1.bias": "fc1.bias", "head.mlp.fc2.weight": "fc2.weight", "head.mlp.fc2.bias": "fc2.bias"}


def load_pooling_head(path: str) -> SigLIPPoolingHead:
    """The head from ``path``: a directory (``model.safetensors`` / ``pytorch_model.bin``) or one weights file; keys
    ending in ``post_layernorm.*`` and ``head.*`` (any prefix, e.g. ``vision_model.``). Heads: the
    (vision_config.)num_attention_heads of a ``config.json`` in that directory (beside that file), else 16
    (so400m's)."""
    files, heads, folder = [path], 16, path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in sorted(os.listdir(path))
                 if n.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    cfg_path = os.path.join(folder, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as fh:
            cfg = json.load(fh)
        heads = int(cfg.get("vision_config", cfg).get("num_attention_heads", heads))
    state = {}
    for name in files:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(name)
        else:
            sd = torch.load(name, map_location="cpu", weights_only=True)
        for key, value in sd.items():
            for suffix, ours in _HEAD_KEYS.items():
                if key == suffix or key.endswith("." + suffix):
                    state[ours] = value
    missing = sorted(set(_HEAD_KEYS.values()) - set(state))
    if missing:
        raise ValueError(f"{path}: no SigLIP pooling head there (missing {missing}); give a SigLIP checkpoint "
                         f"(google/siglip-so400m-patch14-384) or a file with its post_layernorm.* and head.* weights")
    dim, mlp = state["probe"].shape[-1], state["fc1.weight"].shape[0]
    head = SigLIPPoolingHead(dim, heads, mlp)
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------- method
class FastVIDMethod(Method):
    name = "fastvid"
    config_class = FastVIDConfig
    needs_vision_attention = True          # the saliency (and, with a head, the frame embedding) come from the tower
    vision_layer_offset = 0                # the feature layer: the one whose output the projector reads
    vision_cls_score = "heads_sum"         # CLIP towers: the CLS row (the fallback for the probe's attention)
    vision_keys = "head_mean"

    def __init__(self, config):
        super().__init__(config)
        # called by the vision probe on the feature layer's output (F, Np, D) -> (frame embedding, attention)
        self.vision_head = load_pooling_head(self.config.pooling_head) if self.config.pooling_head else None

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext) -> Reduction:
        cfg = self.config
        if video.importance is None:
            raise ValueError("fastvid needs the saliency of every token (the vision tower's attention); the model "
                             "file gave none")
        emb = video.frame_embedding
        source = "pooling_head" if emb is not None else FALLBACK
        if emb is None:
            emb = video.frames.float().mean(1)
        tokens, kept, info = fastvid_reduce(video.frames, video.importance, emb, cfg.retain, cfg.c, cfg.tau, cfg.d,
                                            cfg.p, cfg.beta, cfg.knn, generator=video.generator)
        info["signals"] = source
        info["representatives"] = kept.reshape(-1).nonzero().squeeze(1)          # each output keeps its position
        return Reduction(tokens=tokens, kept=kept, info=info)
