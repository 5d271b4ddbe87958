"""Model registry: architecture -> patch file and defaults; loading by registry name, directory or hub id.

Adding a model = one file in this folder (``ARCHITECTURES``, ``DEFAULTS``, ``language_layers``, ``patch``,
``unpatch``, ``num_video_tokens``) plus one line in ``_REGISTRY``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Optional

import torch

from .. import state as kit_state


@dataclass
class ModelSpec:
    name: str
    module_name: str
    architectures: tuple
    defaults: dict = field(default_factory=dict)

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module_name}")


def _spec(name: str, module_name: str) -> ModelSpec:
    mod = importlib.import_module(f"{__name__}.{module_name}")
    return ModelSpec(name, module_name, tuple(mod.ARCHITECTURES), dict(mod.DEFAULTS))


_REGISTRY = {
    "llava_onevision": "llava_onevision",
    "llava_next_video": "llava_next_video",
    "pllava": "pllava",
    "qwen2_vl": "qwen2_vl",
}


def tiny_models() -> dict:
    """The random-weight tiny models of every registered architecture (tests, demos, smoke runs), by name:
    ``{name: (builder, registry entry, builder kwargs)}``; ``prunevid.models.tiny`` declares them."""
    from . import tiny
    return tiny.TINY_MODELS


# The demo model (a plain LLaVA-OneVision trained on the synthetic benchmark) ships inside the package.
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo_model")
# A checkpoint directory may carry kit defaults that override its architecture's registry defaults
# (the demo model: its protocol, frames and the stage-2 layer chosen by the study's sweep).
KIT_DEFAULTS_FILE = "prunevid_defaults.json"


def demo_model_dir() -> str:
    """The shipped demo model's directory (``from_pretrained`` layout); a clear error when it is missing."""
    if not os.path.isfile(os.path.join(DEMO_MODEL_DIR, "config.json")):
        raise FileNotFoundError(f"the demo model is missing from {DEMO_MODEL_DIR} (train it with "
                                "data_scripts/train_demo_model.py and copy <out>/model there)")
    return DEMO_MODEL_DIR


def default_model() -> str:
    """The kit's default model: the shipped demo model, or the random-weight ``tiny`` while none is shipped."""
    return "demo" if os.path.isfile(os.path.join(DEMO_MODEL_DIR, "config.json")) else "tiny"


def demo_benchmark() -> str:
    """The synthetic test split the shipped demo model was measured on (its ``eval.json``: ``synthetic-v3`` for a
    model of the version-3 world), the kit's default benchmark; ``synthetic`` (version 1) while none is shipped."""
    try:
        with open(os.path.join(DEMO_MODEL_DIR, "eval.json")) as f:
            return json.load(f)["benchmarks"]["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return "synthetic"          # no shipped model, or one recorded before eval.json named its splits


def with_kit_defaults(spec: ModelSpec, path: Optional[str]) -> ModelSpec:
    """``spec`` with the defaults of ``path/prunevid_defaults.json`` (when present) laid over its own."""
    p = os.path.join(path, KIT_DEFAULTS_FILE) if path else None
    if not p or not os.path.isfile(p):
        return spec
    with open(p) as f:
        extra = json.load(f)
    return ModelSpec(spec.name, spec.module_name, spec.architectures, {**spec.defaults, **extra})


def registry() -> dict:
    return {name: _spec(name, mod) for name, mod in _REGISTRY.items()}


def spec_for(model) -> ModelSpec:
    """The registry entry whose architecture is in ``model``'s class hierarchy (matched by class name)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    for spec in registry().values():
        if names & set(spec.architectures):
            return spec
    supported = sorted(a for s in registry().values() for a in s.architectures)
    raise ValueError(f"no PruneVid patch for {type(model).__name__}; supported architectures: {supported}")


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VideoPreprocessing:
    """How a checkpoint wants its frames: resize (square, or short side + centre crop with ``crop``), rescale
    to [0, 1], normalise."""

    size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    resample: str = "bicubic"
    crop: bool = False


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    preprocessing: VideoPreprocessing
    name: str
    # which weights these are (``weights_fingerprint``); None for the kit's tiny models, built from code and a seed
    fingerprint: Optional[str] = None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Up to this many bytes of weight files are hashed in full; larger checkpoints get a file-stat fingerprint.
FULL_HASH_BYTES = 4 << 30
_HUB_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]?$")


def weights_fingerprint(path: str) -> str:
    """Which weights a checkpoint folder holds, so a run folder can tell that its model changed (a re-shipped
    demo model, a retrained checkpoint under the same name) and refuse to resume or reuse cached features.

    - a hub snapshot (``.../snapshots/<commit>/``): ``hub:<commit>``, free;
    - otherwise, up to ``FULL_HASH_BYTES`` of weight files: ``sha256:`` of config.json and every weight file's
      content (the demo model: 5 MB, milliseconds);
    - larger local checkpoints: ``stat:`` hash of each weight file's name, size and modification time (reading
      tens of GB at every run would cost minutes; a copy of the same files reads as a different model, which is
      refused, never silently mixed)."""
    m = _HUB_SNAPSHOT.search(os.path.abspath(path))
    if m:
        return "hub:" + m.group(1)
    names = sorted(n for n in os.listdir(path) if n.endswith(WEIGHT_SUFFIXES) or n == "config.json")
    files = [os.path.join(path, n) for n in names]
    h = hashlib.sha256()
    if sum(os.path.getsize(f) for f in files) <= FULL_HASH_BYTES:
        for name, f in zip(names, files):
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()[:32]
    for name, f in zip(names, files):
        st = os.stat(f)
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return "stat:" + h.hexdigest()[:32]


def fingerprint_of(name_or_path: Optional[str]) -> Optional[str]:
    """The fingerprint ``load(name_or_path)`` would record, without loading: None for the tiny models, for hub
    ids (resolved only when loaded) and for names that resolve to nothing here."""
    name = name_or_path or default_model()
    if name in tiny_models():
        return None
    path = DEMO_MODEL_DIR if name == "demo" else name
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    return weights_fingerprint(path)


def peek_defaults(name_or_path: Optional[str]) -> dict:
    """The registry defaults (with the checkpoint's ``prunevid_defaults.json`` laid over them) that ``load`` would
    attach, read from ``config.json`` without loading any weights; ``{}`` where nothing can be read here (a hub
    id not downloaded). ``"arch"`` names the registry entry and ``"kit_model"`` is True for the kit's own demo
    and tiny models."""
    name = name_or_path or default_model()
    if name in tiny_models():
        arch = tiny_models()[name][1]
        return {**registry()[arch].defaults, "arch": arch, "kit_model": True}
    path = DEMO_MODEL_DIR if name == "demo" else name
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return {}
    with open(cfg_path) as f:
        raw = json.load(f)
    archs = set(raw.get("architectures") or [])
    arch = "pllava" if "pooling_shape" in raw else next(
        (n for n, s in registry().items() if archs & set(s.architectures)), None)
    if arch is None:
        return {}
    spec = with_kit_defaults(registry()[arch], path)
    return {**spec.defaults, "arch": arch, "kit_model": name == "demo" or os.path.abspath(path) == DEMO_MODEL_DIR}


def benchmark_defaults(defaults: dict, benchmark: str) -> dict:
    """A model's defaults for one benchmark (``prunevid.state.defaults_for_benchmark``)."""
    return kit_state.defaults_for_benchmark(defaults, benchmark)


def default_dtype(defaults: dict, protocol: str) -> str:
    """``bfloat16`` for real checkpoints under the official protocol (upstream loads PLLaVA in bfloat16);
    ``float32`` for the kit's demo and tiny models (their recorded numbers are float32) and otherwise."""
    if defaults.get("kit_model") or protocol != "official" or not defaults:
        return "float32"
    return "bfloat16"


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def preprocessing_from_dir(path: str, config) -> VideoPreprocessing:
    """Read the checkpoint's own video processor config (LLaVA-OneVision ships mean/std 0.5, not CLIP's)."""
    size = config.vision_config.image_size
    for rel in ("video_processor/preprocessor_config.json", "video_preprocessor_config.json",
                "preprocessor_config.json"):
        p = os.path.join(path, rel)
        if os.path.isfile(p):
            with open(p) as f:
                cfg = json.load(f)
            sz = cfg.get("size", {})
            size = sz.get("height", sz.get("shortest_edge", size)) if isinstance(sz, dict) else int(sz)
            return VideoPreprocessing(size=int(size), mean=tuple(cfg.get("image_mean", (0.5,) * 3)),
                                      std=tuple(cfg.get("image_std", (0.5,) * 3)))
    return VideoPreprocessing(size=size)


def load(name_or_path: str, *, dtype="float32", device="cpu", attn_implementation: str = "sdpa",
         lora_alpha: Optional[float] = None) -> LoadedModel:
    """Load a model by registry name (``demo``: the shipped demo model; ``tiny``: random tiny LLaVA-OneVision),
    local checkpoint directory, or hub id (downloaded by ``huggingface_hub`` where a network exists). PLLaVA
    directories (a ``config.json`` with ``pooling_shape``) are built by the kit; ``lora_alpha`` sets their LoRA
    scale (default 14)."""
    torch_dtype = _dtype(dtype)
    if name_or_path == "demo":
        loaded = load(demo_model_dir(), dtype=dtype, device=device, attn_implementation=attn_implementation)
        loaded.name = "demo"
        return loaded
    if name_or_path in tiny_models():
        build, _, kwargs = tiny_models()[name_or_path]
        model, tok = build(attn_implementation=attn_implementation, **kwargs)
        model = model.to(device=device, dtype=torch_dtype)
        size = getattr(model.config.vision_config, "image_size", 112)
        return _attach(LoadedModel(model, tok, spec_for(model), VideoPreprocessing(size=size), name_or_path))
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer
    path = name_or_path
    if not os.path.isdir(path):
        if path.startswith((".", "/", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"model directory not found: {path} (a hub id looks like 'org/name'; "
                                    f"registry names: {sorted(['demo', *tiny_models()])})")
        from huggingface_hub import snapshot_download
        path = snapshot_download(name_or_path)
    with open(os.path.join(path, "config.json")) as f:
        raw_config = json.load(f)
    if "pooling_shape" in raw_config:          # PLLaVA: model_type "llava", built by the kit (not in transformers)
        return _load_pllava(path, name_or_path, torch_dtype, device, attn_implementation, lora_alpha)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = os.path.join(path, "chat_template.json")
    if getattr(tokenizer, "chat_template", None) is None and os.path.isfile(template):
        with open(template) as f:
            tokenizer.chat_template = json.load(f)["chat_template"]
    return _attach(LoadedModel(model, tokenizer, with_kit_defaults(spec_for(model), path),
                               preprocessing_from_dir(path, config), name_or_path, weights_fingerprint(path)))


def _attach(loaded: LoadedModel) -> LoadedModel:
    """The model carries its defaults (registry + checkpoint), so ``prunevid.apply(loaded.model)`` resolves the
    same settings as the runner does."""
    kit_state.set_model_defaults(loaded.model, loaded.spec.defaults)
    return loaded


def _load_pllava(path, name, dtype, device, attn_implementation, lora_alpha) -> LoadedModel:
    from transformers import AutoTokenizer
    from .pllava import DEFAULTS, PLLAVA_CHAT_TEMPLATE, UPSTREAM_NUM_FRAMES, UPSTREAM_POOLING_SHAPE
    from .pllava_modeling import from_pretrained
    # As upstream's load_pllava (tasks/eval/model_utils.py): num_frames 16 and pooling_shape (16, 12, 12) are forced
    # whatever the checkpoint's config says, and the evaluation conversation is always upstream's own template.
    model = from_pretrained(path, lora_alpha=lora_alpha if lora_alpha is not None else DEFAULTS["lora_alpha"],
                            dtype=dtype, attn_implementation=attn_implementation,
                            num_frames=UPSTREAM_NUM_FRAMES, pooling_shape=list(UPSTREAM_POOLING_SHAPE)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = PLLAVA_CHAT_TEMPLATE
    pre = VideoPreprocessing(size=model.config.vision_config.image_size, mean=CLIP_MEAN, std=CLIP_STD, crop=True)
    p = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(p):
        with open(p) as f:
            cfg = json.load(f)
        pre.mean = tuple(cfg.get("image_mean", pre.mean))
        pre.std = tuple(cfg.get("image_std", pre.std))
    return _attach(LoadedModel(model, tokenizer, spec_for(model), pre, name, weights_fingerprint(path)))
