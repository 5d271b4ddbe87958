"""The shared part of every model patch: one prefill path and one decode remap for all video LLMs.

A model file describes its model with a ``VideoModelAdapter`` subclass (where the video features come from,
which token id marks them, whether an image-newline follows the frames, where the decoder layers are) and
calls ``patch_inner`` / ``unpatch_inner``. Everything else is here, written once:

The patched inner multimodal module is called exactly like the original: ``input_ids`` hold one placeholder per
video feature. At the prefill that carries a video (``pixel_values_videos``, or the pre-encoded
``mm_encoder_outputs["video"]`` that ``generate`` passes in transformers >= 5.24), for the active method it
  1. computes the frame features (F, P, C) (and the newline, where the model has one; and, when the method
     sets ``needs_vision_attention``, the vision tower's attention pooled to the same grid);
  2. asks ``method.reduce`` for the tokens entering the LLM and shortens the sequence: the first N1
     placeholders receive them, the newline placeholder (never merged or pruned; counted as text) follows, the
     surplus placeholders are dropped; positions are re-numbered 0..N1-1 over the shortened sequence, as the
     official PruneVid code does (``positions="original"``, an option of the pre-LLM methods, instead gives
     every entering token the position of a representative input token — its earliest member — and decoding
     continues from the unreduced length, as multimodal-RoPE models always do);
  3. asks ``method.plan`` for an in-LLM plan (one cut or several: ``prunevid.layer_pruner``) and
     ``method.cache_policy`` for a KV-cache policy, hands both to the ``LayerPruner`` and runs the language model.
Decode steps get their inputs remapped: positions shift by the number of tokens the pre-LLM reduction removed
(the first new token sits at the shortened prefill length, as in the official code), and a full-length 2-D
attention mask is reduced to the kept columns. A method whose settings are a no-op runs the unpatched forward.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Optional, Tuple

import torch

from ..layer_pruner import get_cache
from ..methods.base import Reduction, SequenceLayout, VideoContext
from .. import state as kit_state
from ..state import empty_stats, finish_stats


class VideoModelAdapter:
    """What the shared machinery needs to know about one architecture (override in the model file)."""

    #: config attribute holding the placeholder token id of video features
    placeholder_attr = "video_token_id"
    #: one learned image-newline vector follows the frames (LLaVA-OneVision)
    has_newline = False

    def tokens_per_frame(self, config) -> int:
        raise NotImplementedError

    def num_video_tokens(self, config, num_frames: int) -> int:
        return num_frames * self.tokens_per_frame(config) + int(self.has_newline)

    def placeholder_id(self, config) -> int:
        return getattr(config, self.placeholder_attr)

    def grid(self, inner, kwargs, per_frame: int) -> Tuple[int, int]:
        """(h, w) of one frame's token grid (raster order); square unless the model says otherwise."""
        side = int(round(math.sqrt(per_frame)))
        return side, per_frame // side

    def frame_tokens(self, inner, kwargs) -> Optional[int]:
        """Tokens per frame when it depends on the input (Qwen2-VL's grid), else None (use the config's)."""
        return None

    def full_positions(self, inner, kwargs) -> Optional[torch.Tensor]:
        """Position ids of the *unreduced* prompt, (R, 1, N) or (1, N), when reduced tokens must keep their
        original positions (multimodal RoPE); ``None`` = the official PruneVid rule: re-number 0..N1-1."""
        return None

    def encode(self, inner, videos: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """(1, F, 3, H, W) -> (1, F * P (+1 newline), C): the features the unpatched model would scatter.
        Default: the LLaVA family's ``get_video_features`` (feature layer and strategy from the call or config)."""
        return inner.get_video_features(
            videos, vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"), return_dict=True,
        ).pooler_output

    def vision_attention(self, inner, state, kwargs, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(importance (F, P), keys (F, P, Dk)) pooled to the feature grid, for methods that need them."""
        raise NotImplementedError(f"{type(self).__name__} does not provide the vision tower's attention")


# ------------------------------------------------------------------------------------------------ patching
_CLASS_CACHE: dict = {}


def patch_inner(inner, state, adapter: VideoModelAdapter, extra: Optional[dict] = None) -> None:
    """Swap ``inner``'s class for a generated subclass whose ``forward`` runs the shared prefill/decode path."""
    parent = type(inner)
    key = (parent, type(adapter))
    if key not in _CLASS_CACHE:
        arg_names = [p for p in inspect.signature(parent.forward).parameters if p != "self"]

        def forward(self, *args, **kwargs):
            kwargs.update(zip(arg_names, args))
            return _forward(self, parent, kwargs)

        attrs = {"forward": forward, "_unpatched_class": parent}
        attrs.update(extra or {})
        _CLASS_CACHE[key] = type(f"PruneVid{parent.__name__}", (parent,), attrs)
    inner.__class__ = _CLASS_CACHE[key]
    state.adapter = adapter
    kit_state.attach(inner, state)


def unpatch_inner(inner) -> None:
    if hasattr(inner, "_unpatched_class"):
        inner.__class__ = inner._unpatched_class
    kit_state.detach(inner)


def standard_module_functions(adapter: VideoModelAdapter, class_extras=None):
    """The functions a model file exposes to the registry, for the usual layout (``model.model`` is the
    multimodal module, ``model.model.language_model.layers`` the decoder layers):
    ``(language_layers, tokens_per_frame, num_video_tokens, patch, unpatch)``. ``class_extras(parent)`` gives
    extra attributes of the generated class (e.g. a probing ``get_video_features``)."""
    def language_layers(model):
        return model.model.language_model.layers

    def tokens_per_frame(config) -> int:
        return adapter.tokens_per_frame(config)

    def num_video_tokens(config, num_frames: int) -> int:
        """Placeholders one video of ``num_frames`` frames needs."""
        return adapter.num_video_tokens(config, num_frames)

    def patch(model, state) -> None:
        inner = model.model
        patch_inner(inner, state, adapter, class_extras(type(inner)) if class_extras else None)

    def unpatch(model) -> None:
        unpatch_inner(model.model)

    return language_layers, tokens_per_frame, num_video_tokens, patch, unpatch


# ------------------------------------------------------------------------------------------------ forward
def _encoded_video(kwargs):
    """The pre-encoded video (``mm_encoder_outputs["video"]``), as generate() passes it in transformers >= 5.24."""
    mm = kwargs.get("mm_encoder_outputs")
    if not mm:
        return None
    return mm.get("video") if isinstance(mm, dict) else None


def _features_of(encoded) -> torch.Tensor:
    feats = encoded.pooler_output if hasattr(encoded, "pooler_output") else encoded
    return feats if isinstance(feats, torch.Tensor) else torch.stack(list(feats))


def _forward(self, parent, kwargs):
    state = kit_state.find(self)
    adapter = state.adapter
    method = state.impl
    videos = kwargs.get("pixel_values_videos")
    encoded = _encoded_video(kwargs)
    input_ids = kwargs.get("input_ids")
    cache = get_cache(kwargs)
    past = cache.get_seq_length() if cache is not None else 0

    if videos is not None or encoded is not None:
        state.decode = None
        state.pruner.reset_decode()
        state.info = {}
        if not method.enabled:
            state.pruner.start_record()
            try:
                out = parent.forward(self, **kwargs)
            finally:
                seen = state.pruner.stop_record()
            state.stats = _record_layers(_unpruned_stats(self, adapter, input_ids), seen, out, past)
            return out
        return _pruned_prefill(self, parent, adapter, state, kwargs, past)

    dec = state.decode
    if dec is not None and past > 0 and past == dec["cache_len"]:
        kwargs = _remap_decode(kwargs, dec)
    elif past == 0:
        state.decode = None
        state.pruner.reset_decode()
    return parent.forward(self, **kwargs)


def _unpruned_stats(self, adapter, input_ids) -> dict:
    stats = empty_stats()
    if input_ids is not None and input_ids.shape[0] == 1:
        n_vis = int((input_ids[0] == adapter.placeholder_id(self.config)).sum()) - int(adapter.has_newline)
        stats.update(visual_tokens_in=n_vis, visual_tokens_stage1=n_vis, visual_tokens_stage2=n_vis,
                     kv_visual_tokens=n_vis, text_tokens=input_ids.shape[1] - n_vis)
    return finish_stats(stats)


def _output_cache(out):
    """The KV cache a forward returned (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    return getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)


def _record_layers(stats: dict, seen, out, past: int) -> dict:
    """``layer_tokens`` / ``layer_kv_tokens`` of a prefill (``prunevid.state.STATS_KEYS``): the visual tokens each
    decoder layer ran on, as its hook saw the sequence, and the visual entries its cache holds at the end."""
    text = stats.get("text_tokens")
    if text is None or not seen or any(n is None for n in seen):
        return stats
    stats["layer_tokens"] = [n - text for n in seen]
    cache = _output_cache(out)
    layers = getattr(cache, "layers", None)
    if layers and past == 0 and len(layers) == len(seen):
        stats["layer_kv_tokens"] = [layer.get_seq_length() - text for layer in layers]
    return stats


def _pruned_prefill(self, parent, adapter: VideoModelAdapter, state, kwargs, past: int = 0):
    method = state.impl
    input_ids = kwargs.get("input_ids")
    videos = kwargs.get("pixel_values_videos")
    encoded = _encoded_video(kwargs)
    if input_ids is None:
        raise ValueError("the PruneVid patch needs input_ids (with the video placeholders), not inputs_embeds")
    if encoded is None:
        state.vision = None
        feats = adapter.encode(self, videos, kwargs)          # may record the vision attention (state.vision)
    else:
        feats = _features_of(encoded)
    if input_ids.shape[0] != 1 or feats.shape[0] != 1:
        raise ValueError(f"the PruneVid patch supports batch size 1 (one video per call), got input_ids of "
                         f"shape {tuple(input_ids.shape)} and a video batch of {feats.shape[0]}")
    mm = kwargs.get("mm_encoder_outputs") or {}
    if kwargs.get("pixel_values") is not None or (isinstance(mm, dict) and mm.get("image") is not None):
        raise ValueError("the PruneVid patch does not support images and a video in the same prompt")

    feats = feats[0]
    n_newline = int(adapter.has_newline)
    n_feat = feats.shape[0] - n_newline
    per_frame = adapter.frame_tokens(self, kwargs) or adapter.tokens_per_frame(self.config)
    if n_feat % per_frame:
        raise ValueError(f"the video features hold {feats.shape[0]} tokens, not frames x {per_frame}"
                         + (" + 1 newline" if n_newline else ""))
    n_frames = n_feat // per_frame
    placeholders = (input_ids[0] == adapter.placeholder_id(self.config)).nonzero().squeeze(1)
    if placeholders.numel() != feats.shape[0]:
        raise ValueError(f"the prompt holds {placeholders.numel()} video placeholders, but the video gives "
                         f"{feats.shape[0]} features ({n_frames} frames x {per_frame} tokens"
                         + (" + 1 image-newline)" if n_newline else ")"))
    if int(placeholders[-1] - placeholders[0]) + 1 != feats.shape[0]:
        raise ValueError("the video placeholders of the prompt must be contiguous")

    frames = feats[:n_feat].reshape(n_frames, per_frame, -1)                  # (F, P, C)
    newline = feats[n_feat:]                                                   # (1, C) or (0, C)
    importance = keys = None
    if method.needs_vision_attention:
        importance, keys = adapter.vision_attention(self, state, kwargs, frames)
    vision = getattr(state, "vision", None) or {}
    video = VideoContext(frames=frames, grid=adapter.grid(self, kwargs, per_frame), generator=state.generator(),
                         importance=importance, keys=keys, hints=dict(state.hints),
                         frame_embedding=vision.get("frame_embedding") if method.needs_vision_attention else None)

    stats = empty_stats()
    stats.update(visual_tokens_in=n_frames * per_frame)
    red = method.reduce(video)
    if red is None:  # frames enter unchanged: every frame is one dynamic group of one segment
        red = Reduction(tokens=frames.reshape(-1, frames.shape[-1]), static_sizes=[0],
                        dynamic_sizes=[n_frames * per_frame], window_sizes=[n_frames])
    visual = red.tokens
    state.last_reduction = red
    state.last_merge = red.info.get("merge")
    n_vis = visual.shape[0]
    stats["visual_tokens_stage1"] = n_vis
    if "merge" in red.info:  # PruneVid's stage-1 structure
        stats.update(segments=list(red.window_sizes), static_tokens=list(red.static_sizes),
                     dynamic_tokens=list(red.dynamic_sizes))

    # Shorter sequence: text, the first n_vis placeholders, the newline placeholder (if any), text.
    n_full = input_ids.shape[1]
    first = int(placeholders[0])
    after = int(placeholders[-1]) + 1
    device = input_ids.device
    keep1 = torch.cat([torch.arange(first + n_vis, device=device),
                       torch.arange(after - n_newline, n_full, device=device)])
    ids = input_ids[:, keep1]
    embeds = self.get_input_embeddings()(ids)
    embeds[0, first:first + n_vis] = visual.to(embeds.dtype)
    if n_newline:
        embeds[0, first + n_vis] = newline[0].to(embeds.dtype)
    n1 = ids.shape[1]

    mask = kwargs.get("attention_mask")
    new_kwargs = dict(kwargs, input_ids=None, inputs_embeds=embeds, pixel_values_videos=None)
    new_kwargs.pop("mm_encoder_outputs", None)
    if mask is not None:
        new_kwargs["attention_mask"] = mask[:, keep1]
    full_pos = adapter.full_positions(self, kwargs)
    if full_pos is None and getattr(state.config, "positions", "renumber") == "original":
        # also when nothing was removed: a reduction may reorder (PruneVid's spatial merge outputs its clusters in
        # centre-score order, so re-numbering would scramble a frame's layout even at cluster_ratio 1)
        full_pos = sequence_positions(kwargs, input_ids)
    offset, next_pos = n_full - n1, n1
    if full_pos is not None:
        # Reduced tokens keep their place: each takes the position of a representative input token.
        rep = representative_sources(red, frames.reshape(-1, frames.shape[-1])).to(device)
        src = torch.cat([torch.arange(first, device=device), first + rep,
                         torch.arange(after - n_newline, n_full, device=device)])
        new_kwargs["position_ids"] = full_pos.index_select(-1, src.to(full_pos.device))
        offset, next_pos = 0, int(full_pos.max()) + 1
    elif n1 != n_full:  # positions re-numbered over the shortened sequence (official PruneVid / LLaVA behaviour)
        base = new_kwargs.get("attention_mask")
        base = torch.ones_like(ids) if base is None else base.long()
        new_kwargs["position_ids"] = (base.cumsum(-1) - 1).clamp_min(0)

    layout = SequenceLayout(seq_len=n1, visual_start=first, visual_len=n_vis, query_start=first + n_vis + n_newline,
                            num_layers=len(state.pruner.layers), num_frames=n_frames,
                            visual_tokens_in=n_frames * per_frame, reduction=red)
    plan = method.plan(layout)
    policy = method.cache_policy(layout)
    if plan is not None:
        state.pruner.arm(plan)
    if policy is not None:
        policy.phase = "prefill"
    state.pruner.set_policy(policy)
    state.pruner.start_record()
    try:
        out = parent.forward(self, **new_kwargs)
    finally:
        seen = state.pruner.stop_record()
        if plan is not None:
            state.pruner.disarm()
        if policy is not None:
            policy.phase = "decode"
    state.last_plan = plan

    # the columns of layer 0's cache (what a decode step's 2-D mask covers): the kept tokens where every layer's
    # cache was cut to them, all of them where each layer keeps what it ran on (PyramidDrop)
    cache_keep = None if plan is None else plan.cache_keep
    kept_seq = keep1 if cache_keep is None else keep1[cache_keep.to(keep1.device)]
    if policy is not None and policy.kept_positions() is not None:
        kp = policy.kept_positions()
        # per-KV-head caches (Look-M, (H_kv, T')): the mask columns follow head 0's slots; text entries sit in
        # the same slots in every head and visual slots hold real (unmasked) tokens, so any head gives the mask
        kept_seq = keep1[(kp[0] if kp.dim() == 2 else kp).to(keep1.device)]
    stats["visual_tokens_stage2"] = plan.kept_visual if plan is not None and plan.keep is not None else n_vis
    stats["text_tokens"] = n1 - n_vis
    out_cache = _output_cache(out)
    if out_cache is not None and getattr(out_cache, "layers", None):
        cache_len = out_cache.get_seq_length()
        stats["kv_visual_tokens"] = out_cache.layers[-1].get_seq_length() - stats["text_tokens"]
        state.decode = {"n_full": n_full, "offset": offset, "kept": kept_seq, "seen": 0,
                        "cache_len": cache_len, "next_pos": next_pos, "pos_rows": None if full_pos is None
                        else (full_pos.shape[0] if full_pos.dim() == 3 else None)}
    else:
        state.pruner.reset_decode()
    state.stats = _record_layers(finish_stats(stats), seen, out, past)
    state.info = dict(red.info)
    state.info.pop("merge", None)
    state.info.pop("sources", None)                        # a tensor, on the reduction (representative_sources)
    state.info.pop("representatives", None)                # likewise
    if policy is not None and policy.info is not None:
        state.info.update(policy.info)                     # the policy keeps updating it during decoding
        policy.info = state.info
    return out


def _remap_decode(kwargs, dec):
    """Inputs of a step after a pruned prefill, given in full-sequence terms -> terms of the pruned cache."""
    ref = kwargs.get("input_ids")
    if ref is None:
        ref = kwargs.get("inputs_embeds")
    q = ref.shape[1]
    kwargs = dict(kwargs)
    pos = kwargs.get("position_ids")
    if pos is not None:
        kwargs["position_ids"] = pos - dec["offset"]
    else:
        pos = (torch.arange(q, device=ref.device) + dec["next_pos"])[None]
        kwargs["position_ids"] = pos if dec.get("pos_rows") is None else pos[None].expand(dec["pos_rows"], 1, q)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        full_len = dec["n_full"] + dec["seen"] + q
        if mask.shape[1] == full_len:
            kept = dec["kept"].to(mask.device)
            kwargs["attention_mask"] = torch.cat([mask[:, kept], mask[:, dec["n_full"]:]], dim=1)
        elif mask.shape[1] != dec["cache_len"] + q:
            raise ValueError(f"attention_mask has length {mask.shape[1]}; expected {full_len} (full sequence) "
                             f"or {dec['cache_len'] + q} (pruned cache) for this decode step")
    dec["seen"] += q
    dec["cache_len"] += q
    dec["next_pos"] += q
    return kwargs


def sequence_positions(kwargs: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """(1, N) 1-D position ids of the *unreduced* prompt: the caller's ``position_ids`` when given, else
    ``cumsum(attention_mask) - 1`` (what the unpatched model uses; 0..N-1 without a mask). For the option
    ``positions="original"`` on 1-D RoPE models, where reduced tokens keep the positions of their inputs."""
    pos = kwargs.get("position_ids")
    if pos is not None:
        return pos
    mask = kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask.long()
    return (mask.cumsum(-1) - 1).clamp_min(0)


def representative_sources(red: Reduction, inputs: torch.Tensor) -> torch.Tensor:
    """For each token a reduction outputs, the flat input index (frame * P + location) whose position it takes.

    ``inputs`` (F * P, C) are the tokens the reduction saw. PruneVid's merged tokens (provenance in
    ``info["merge"].assignment``) take their earliest member in (frame, raster) order; a selection that outputs
    its kept inputs unchanged, in order or in the order of ``info["sources"]`` (flat input indices), takes
    their indices (checked). Other reductions cannot be placed and raise.
    """
    merge = red.info.get("merge")
    n_out, n_in = red.num_tokens, inputs.shape[0]
    if merge is not None:
        flat = merge.assignment.reshape(-1)
        idx = torch.arange(flat.numel(), device=flat.device)
        rep = torch.full((n_out,), flat.numel(), dtype=torch.long, device=flat.device)
        return rep.scatter_reduce(0, flat, idx, reduce="amin")
    if red.info.get("representatives") is not None:   # declared provenance (FastVID: each merged anchor's own index)
        return red.info["representatives"].to(inputs.device)
    candidates = []
    if red.info.get("sources") is not None:   # a selection in its own order (DyCoke: by similarity)
        candidates.append(red.info["sources"].to(inputs.device))
    if red.kept is not None and int(red.kept.sum()) == n_out:
        candidates.append(red.kept.reshape(-1).nonzero().squeeze(1).to(inputs.device))
    if n_out == n_in:
        candidates.append(torch.arange(n_in, device=inputs.device))
    for rep in candidates:
        if torch.equal(inputs[rep].to(red.tokens.dtype), red.tokens):
            return rep
    raise NotImplementedError("this reduction records no token provenance, so its tokens cannot keep their "
                              "original positions (needed by multimodal-RoPE models)")


# ------------------------------------------------------------------------------------------------ vision probe
class VisionAttentionProbe:
    """Forward pre-hook on one vision attention module, for this instance and one call only. From that layer's
    own q/k (SDPA keeps running; nothing is eager) it computes, per frame of Np tokens:

    * ``importance`` (F, Np) float32, by ``rule``:
      ``"cls_heads_sum"``: the CLS row of the per-head attention, summed over heads (VisionZip,
      dvlab-research/VisionZip ``visionzip/clip_encoder.py`` ``CLIPVisionTower_VisionZip.forward``:
      ``attn_weights[:, :, 0, 1:].sum(dim=1)``); ``"cls_full"``: the CLS row of one softmax over the *full*
      q/k vectors (heads concatenated) scaled by D^-1/2 (PruMerge, 42Shawn/LLaVA-PruMerge
      ``llava/model/multimodal_encoder/clip_encoder.py`` ``token_prune_merge_advanced``); ``"received"``
      (towers without a CLS token, SigLIP): the attention each token receives, mean over heads and queries
      (block-wise column sums; HoliTom's VisionZip port, the kit's adaptation for PruMerge). Column 0 of the CLS
      rules is the CLS token itself; the adapters drop it with the CLS feature.
    * ``keys`` (F, Np, d): ``"head_mean"`` the keys averaged over heads, d = D/H (VisionZip's ``metric``);
      ``"full"`` the ``k_proj`` output, d = D (PruMerge's ``desired_layer_k``).
    """

    RULES = ("received", "cls_heads_sum", "cls_full")

    def __init__(self, attn, block: int = 256, *, rule: str = "received", keys: str = "head_mean",
                 layer_index: Optional[int] = None):
        if rule not in self.RULES or keys not in ("head_mean", "full"):
            raise ValueError(f"unknown vision probe rule {rule!r} / keys {keys!r}")
        self.attn, self.block, self.rule, self.key_rule, self.layer_index = attn, block, rule, keys, layer_index
        self.importance = self.keys = None
        self.handle = attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        from ..prune import attention_column_sums
        h = args[0] if args else kwargs["hidden_states"]               # (frames, Np, D), layer-normed
        n_frames, n_patches, dim = h.shape
        heads = getattr(module, "num_heads", None) or module.config.num_attention_heads
        scale = getattr(module, "scale", None) or getattr(module, "scaling")
        with torch.no_grad():
            imp, keys = [], []
            for f in range(n_frames):
                qf, kf = module.q_proj(h[f]), module.k_proj(h[f])                       # (Np, D)
                q = qf.view(n_patches, heads, -1).transpose(0, 1)                       # (H, Np, d)
                k = kf.view(n_patches, heads, -1).transpose(0, 1)
                if self.rule == "cls_heads_sum":
                    logits = torch.matmul(q[:, :1].float(), k.float().transpose(-1, -2)) * scale     # (H, 1, Np)
                    imp.append(logits.softmax(-1)[:, 0].sum(0))
                elif self.rule == "cls_full":                     # one "head" of width D, as upstream's q @ k.T
                    imp.append((kf.float() @ qf[0].float() * dim ** -0.5).softmax(-1))
                else:
                    sums = attention_column_sums(q, k, scaling=scale, block=self.block)   # (H, Np)
                    imp.append(sums.sum(0) / (heads * n_patches))
                keys.append(k.mean(0) if self.key_rule == "head_mean" else kf)
            self.importance = torch.stack(imp)                           # (F, Np) float32
            self.keys = torch.stack(keys)                                # (F, Np, d)
        return None

    def attach_head(self, layer, head) -> None:
        """Also run ``head`` ((F, Np, D) -> (frame embedding (F, D'), attention (F, Np))) on ``layer``'s output
        (FastVID's SigLIP pooling head): its attention replaces the importance (rule ``"pooling_head"``)."""
        def hook(module, args, out):
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            head.to(hidden.device)
            with torch.no_grad():
                self.frame_embedding, self.head_importance = head(hidden)
        self.frame_embedding = self.head_importance = None
        self.head_handle = layer.register_forward_hook(hook)

    def remove(self):
        self.handle.remove()
        if getattr(self, "head_handle", None) is not None:
            self.head_handle.remove()

    def record(self) -> dict:
        """What ``state.vision`` keeps of this call (the rule and layer say which signal the method got)."""
        rec = {"importance": self.importance, "keys": self.keys, "rule": self.rule, "keys_rule": self.key_rule,
               "layer": self.layer_index}
        if getattr(self, "head_importance", None) is not None:
            rec.update(importance=self.head_importance, rule="pooling_head", frame_embedding=self.frame_embedding)
        return rec


def _encoder_layers(tower):
    tower = getattr(tower, "vision_model", tower)                  # the HF vision model wraps or is the transformer
    return tower.encoder.layers


def tower_has_cls(tower) -> bool:
    """Whether the vision tower prepends a CLS token (CLIP's ``class_embedding``; SigLIP has none)."""
    emb = getattr(getattr(tower, "vision_model", tower), "embeddings", None)
    return getattr(emb, "class_embedding", None) is not None


def vision_layer_index(tower, feature_layer, offset: int = 0) -> int:
    """0-based index of the vision encoder layer whose output ``hidden_states[feature_layer]`` is, plus
    ``offset`` (1: the layer after the feature layer, PruMerge's); where that layer does not exist (SigLIP's
    feature layer -1 is the last one) the feature layer itself."""
    layers = _encoder_layers(tower)
    if not isinstance(feature_layer, int):
        raise NotImplementedError("vision attention for several vision_feature_layers is not supported")
    idx = len(layers) + feature_layer if feature_layer < 0 else feature_layer - 1
    if not 0 <= idx < len(layers):
        raise ValueError(f"vision_feature_layer {feature_layer} is not the output of an encoder layer")
    return idx + offset if 0 <= idx + offset < len(layers) else idx


def vision_layer(tower, feature_layer, offset: int = 0):
    """The vision encoder layer whose output ``hidden_states[feature_layer]`` is (``offset``: see
    ``vision_layer_index``)."""
    return _encoder_layers(tower)[vision_layer_index(tower, feature_layer, offset)]


def method_probe(tower, feature_layer, method) -> VisionAttentionProbe:
    """The probe ``method``'s rule asks for, attached to ``tower``: its class attributes
    ``vision_layer_offset`` (0 feature layer, 1 the layer after it), ``vision_cls_score`` (``"heads_sum"`` /
    ``"full"``, used where the tower has a CLS token; otherwise the attention received) and ``vision_keys``
    (``"head_mean"`` / ``"full"``)."""
    idx = vision_layer_index(tower, feature_layer, getattr(method, "vision_layer_offset", 0))
    rule = "cls_" + getattr(method, "vision_cls_score", "heads_sum") if tower_has_cls(tower) else "received"
    probe = VisionAttentionProbe(_encoder_layers(tower)[idx].self_attn, rule=rule,
                                 keys=getattr(method, "vision_keys", "head_mean"), layer_index=idx)
    head = getattr(method, "vision_head", None)
    if head is not None:     # FastVID's SigLIP pooling head on the feature layer's output: importance + frame embedding
        probe.attach_head(_encoder_layers(tower)[vision_layer_index(tower, feature_layer)], head)
    return probe


def probe_call(fn, probe: VisionAttentionProbe, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` with ``probe`` attached (``method_probe``), then detach it; (result, probe)."""
    try:
        return fn(*args, **kwargs), probe
    finally:
        probe.remove()


def probing_get_video_features(parent):
    """A ``get_video_features`` for the patched class that, when the active method needs the vision tower's
    attention, records it (``state.vision``) during this call. transformers >= 5.24's generate() encodes the
    video *before* the prefill (``mm_encoder_outputs``) through this method."""
    @functools.wraps(parent.get_video_features)   # generate() reads this signature to pick its arguments
    def get_video_features(self, pixel_values_videos, *args, **kwargs):
        state = kit_state.find(self)
        if state is None or not state.impl.enabled or not state.impl.needs_vision_attention:
            return parent.get_video_features(self, pixel_values_videos, *args, **kwargs)
        layer = kwargs.get("vision_feature_layer", args[0] if args else None)
        if layer is None:
            layer = self.config.vision_feature_layer
        out, probe = probe_call(parent.get_video_features, method_probe(self.vision_tower, layer, state.impl),
                                self, pixel_values_videos, *args, **kwargs)
        state.vision = {"features": out.pooler_output, **probe.record()}
        return out
    return get_video_features
