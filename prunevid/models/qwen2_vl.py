"""``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``.

Model-specific facts only; the machinery is ``prunevid.models.video_patch``. A Qwen2-VL "frame" is a temporal
patch of 2 video frames: ``video_grid_thw = (T/2, H/14, W/14)``, and the merger turns each 2x2 block of patches
into one token, so a frame holds (H/28) x (W/28) tokens in raster order. No newline; one ``<|video_pad|>``
placeholder per token.

Positions (the rule this kit chose; the issue asked to choose and document one): Qwen's multimodal RoPE gives
every video token a (t, h, w) position. A token that survives a reduction keeps the positions of the input token
it stands for — a PruneVid merged token those of its earliest member in (frame, raster) order, a kept token its
own — and text keeps its positions, so the first generated token continues exactly where the unreduced
sequence would have. (The official PruneVid code re-numbers positions 0..N1-1 on PLLaVA's 1-D RoPE; that has no
meaning for 3-D positions.) In-LLM pruning keeps original positions anyway.

Inputs: ``pixel_values_videos`` patchified as the Qwen2-VL processor does (``patchify`` here, torch only),
``video_grid_thw`` and ``mm_token_type_ids`` (0 text, 2 video), which transformers requires for the 3-D positions.
"""
from __future__ import annotations

import functools
import math

import torch

from .. import state as kit_state
from .video_patch import VideoModelAdapter, patch_inner, standard_module_functions, unpatch_inner

ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
DEFAULTS = {"frames": 32, "selected_layer": 10, "tokens_per_frame": None, "protocol": "lmms-eval"}
VIDEO_TOKEN = "<|video_pad|>"


def _grid(kwargs, inner=None):
    thw = kwargs.get("video_grid_thw")
    if thw is None and inner is not None:
        # generate() encodes the video first and drops video_grid_thw from the prefill's arguments; the patched
        # get_video_features recorded it
        thw = inner.__dict__.get("_recorded_video_grid_thw")
    if thw is None:
        raise ValueError("Qwen2-VL needs video_grid_thw with pixel_values_videos")
    return [int(v) for v in thw[0]]


def _recording_get_video_features(parent):
    @functools.wraps(parent.get_video_features)   # generate() reads this signature to pick its arguments
    def get_video_features(self, pixel_values_videos, video_grid_thw=None, *args, **kwargs):
        state = kit_state.find(self)
        if state is not None and state.impl.enabled and state.impl.needs_vision_attention:
            raise NotImplementedError(f"method {state.method!r} needs the vision tower's attention, which the kit "
                                      "does not extract from Qwen2-VL's windowed vision encoder")
        self.__dict__["_recorded_video_grid_thw"] = video_grid_thw
        return parent.get_video_features(self, pixel_values_videos, video_grid_thw, *args, **kwargs)
    return get_video_features


class Adapter(VideoModelAdapter):
    placeholder_attr = "video_token_id"
    has_newline = False

    def merge_size(self, config) -> int:
        return int(config.vision_config.spatial_merge_size)

    def tokens_per_frame(self, config) -> int:
        raise ValueError("Qwen2-VL's tokens per frame depend on the video size (video_grid_thw)")

    def frame_tokens(self, inner, kwargs) -> int:
        _, h, w = _grid(kwargs, inner)
        m = self.merge_size(inner.config)
        return (h // m) * (w // m)

    def grid(self, inner, kwargs, per_frame):
        _, h, w = _grid(kwargs, inner)
        m = self.merge_size(inner.config)
        return h // m, w // m

    def encode(self, inner, videos, kwargs):
        out = inner.get_video_features(videos, kwargs.get("video_grid_thw"), return_dict=True).pooler_output
        return torch.cat(list(out), dim=0)[None]                              # (1, N, C)

    def full_positions(self, inner, kwargs):
        pos = kwargs.get("position_ids")
        if pos is not None:                                  # generate passes (4, 1, N): text row + (t, h, w)
            return pos
        pos, deltas = inner.get_rope_index(
            kwargs["input_ids"], image_grid_thw=None, video_grid_thw=kwargs.get("video_grid_thw"),
            attention_mask=kwargs.get("attention_mask"), second_per_grid_ts=kwargs.get("second_per_grid_ts"),
            mm_token_type_ids=kwargs.get("mm_token_type_ids"))
        inner.rope_deltas = deltas                            # what the unpatched forward stores for decoding
        return pos                                            # (3, 1, N)


ADAPTER = Adapter()
language_layers, tokens_per_frame, _, _, _ = standard_module_functions(ADAPTER)


def num_video_tokens(config, num_frames: int, height: int, width: int) -> int:
    """Placeholders for ``num_frames`` frames of height x width pixels (multiples of 28)."""
    patch = config.vision_config.patch_size
    tp = config.vision_config.temporal_patch_size
    m = config.vision_config.spatial_merge_size
    return math.ceil(num_frames / tp) * (height // patch // m) * (width // patch // m)


def patchify(frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2):
    """(T, 3, H, W) normalised frames -> (flat patches (T/tp * H/p * W/p, 3 * tp * p * p), grid_thw (1, 3)).

    The Qwen2-VL processor's layout: for each temporal patch, 2x2 merge blocks in raster order, inside a block
    its 4 patches in raster order; each patch flattened as (channel, time, row, column). A frame count that is
    not a multiple of ``temporal_patch_size`` repeats the last frame.
    """
    t, c, h, w = frames.shape
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(f"frame size {h}x{w} must be a multiple of {patch_size * merge_size}")
    if t % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(temporal_patch_size - t % temporal_patch_size, -1, -1, -1)])
        t = frames.shape[0]
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = frames.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                       gw // merge_size, merge_size, patch_size)
    # -> (gt, gh/m, gw/m, m, m, c, tp, p, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    return flat, torch.tensor([[gt, gh, gw]])


def video_inputs(loaded, frames: torch.Tensor) -> tuple:
    """(T, H, W, 3) uint8 -> (model inputs {pixel_values_videos, video_grid_thw}, number of placeholders).

    Frames are resized to a square of ``loaded.preprocessing.size`` rounded to a multiple of 28 (the kit's
    simplification of the processor's aspect-keeping ``smart_resize``), normalised, and patchified."""
    from ..video import preprocess_frames
    cfg = loaded.model.config.vision_config
    unit = cfg.patch_size * cfg.spatial_merge_size
    pre = loaded.preprocessing
    size = max(unit, int(round(pre.size / unit)) * unit)
    pixels = preprocess_frames(frames, size, pre.mean, pre.std, pre.resample)           # (T, 3, S, S)
    flat, thw = patchify(pixels, cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size)
    n = int(thw[0, 0]) * (size // unit) ** 2
    return {"pixel_values_videos": flat, "video_grid_thw": thw}, n


def mm_token_type_ids(config, input_ids: torch.Tensor) -> torch.Tensor:
    """0 for text, 1 for image, 2 for video placeholders (required by transformers for the 3-D positions)."""
    return (input_ids == config.image_token_id).long() + 2 * (input_ids == config.video_token_id).long()


def patch(model, state) -> None:
    inner = model.model
    patch_inner(inner, state, ADAPTER, {"get_video_features": _recording_get_video_features(type(inner))})


def unpatch(model) -> None:
    model.model.__dict__.pop("_recorded_video_grid_thw", None)
    unpatch_inner(model.model)
