"""What the entry-point group ``lmms_eval.models`` (``pyproject.toml``) points at: one callable per plugin model,
returning the ``ModelManifest`` lmms-eval 0.7's model registry (``lmms_eval.models.registry_v2``) registers.

lmms-eval loads every entry point of that group while it builds its registry, i.e. at ``import lmms_eval.models``:
the model classes are therefore named by path and imported only when a run asks for one of them (loading this
module costs the import of the ``prunevid`` package itself, i.e. torch, which lmms-eval's evaluation imports anyway)."""
from __future__ import annotations

_CLASSES = {
    "prunevid_llava_onevision": "PruneVidLlavaOneVision",
    "prunevid_qwen2_5_vl": "PruneVidQwen2_5_VL",
    "prunevid_llava_next_video": "PruneVidLlavaNextVideo",
}


def _manifest(model_id: str):
    from lmms_eval.models.registry_v2 import ModelManifest
    # a "simple" model: lmms-eval hands it the task's own rendered question (doc_to_text), as it does its own
    # llava_onevision, rather than chat messages
    return ModelManifest(model_id=model_id,
                         simple_class_path=f"prunevid.integrations.lmms_eval.models.{_CLASSES[model_id]}")


def llava_onevision():
    return _manifest("prunevid_llava_onevision")


def qwen2_5_vl():
    return _manifest("prunevid_qwen2_5_vl")


def llava_next_video():
    return _manifest("prunevid_llava_next_video")
