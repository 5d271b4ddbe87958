"""On-disk caches for benchmark sweeps: decoded frames and vision-encoder features.

Enabled by ``$PRUNEVID_CACHE_DIR`` (off by default: decoded frames take several MB per video). Frames are
keyed by the video (path, size, modification time), frame count, sampling and bound; features additionally
by the model (name, dtype). A sweep of methods over one benchmark then decodes and encodes each video once.
Methods that need the vision tower itself (``needs_vision_attention``: VisionZip, PruMerge) must not reuse
encoder features: ``uses_feature_cache(method)`` says which methods do.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Optional

import numpy as np
import torch



def uses_feature_cache(method: str) -> bool:
    """True for methods that act after the vision encoder (their input is the encoder's output alone)."""
    from .. import methods
    try:
        cls = methods.method_class(method)
    except (ValueError, AttributeError):
        return False
    return not getattr(cls, "needs_vision_attention", True)


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


class MediaCache:
    def __init__(self, root: str):
        self.root = root
        self.hits = {"frames": 0, "features": 0}
        self.misses = {"frames": 0, "features": 0}

    @classmethod
    def from_env(cls) -> Optional["MediaCache"]:
        root = os.environ.get("PRUNEVID_CACHE_DIR")
        return cls(root) if root else None

    @staticmethod
    def frames_key(item, num_frames: int, sampling: str) -> str:
        desc = [_stamp(item.video), num_frames, sampling, list(item.bound) if item.bound else None, item.frame_folder]
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:32]

    def frames(self, key: str, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Cached frames; a clip that was short when decoded (``video.ShortClipWarning``) keeps a ``.short``
        note beside its file and warns again on every hit, so a cached run counts it as a fresh one does."""
        import warnings
        from ..video import ShortClipWarning
        path = os.path.join(self.root, "frames", key[:2], key + ".npy")
        note = path[:-len(".npy")] + ".short"
        if os.path.exists(path):
            try:
                arr = np.load(path)
                self.hits["frames"] += 1
                if os.path.exists(note):
                    with open(note) as f:
                        warnings.warn(f.read(), ShortClipWarning, stacklevel=2)
                return torch.from_numpy(arr)
            except (OSError, ValueError):
                pass   # a torn file: decode again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ShortClipWarning)
            frames = load()
        short = [w for w in caught if issubclass(w.category, ShortClipWarning)]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.misses["frames"] += 1
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if short:
            with open(note, "w") as f:
                f.write(str(short[0].message))
        tmp = path + f".{os.getpid()}.part"
        with open(tmp, "wb") as f:
            np.save(f, frames.numpy())
        os.replace(tmp, path)
        return frames

    def features(self, key: str, model_key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = os.path.join(self.root, "features", model_key, key[:2], key + ".pt")
        if os.path.exists(path):
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                self.hits["features"] += 1
                return feats
            except Exception:
                pass
        feats = compute()
        self.misses["features"] += 1
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + f".{os.getpid()}.part"
        torch.save(feats.detach().cpu(), tmp)
        os.replace(tmp, path)
        return feats


def model_key(name: str, dtype, preprocessing, fingerprint: Optional[str] = None) -> str:
    """The cached features' model: name, dtype, frame preprocessing and the weights fingerprint (other weights
    under the same name, e.g. a re-shipped demo model, must not reuse the old features)."""
    desc = [str(name), str(dtype), getattr(preprocessing, "size", None), list(getattr(preprocessing, "mean", []) or []),
            list(getattr(preprocessing, "std", []) or [])]
    if fingerprint is not None:
        desc.append(fingerprint)
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]
