"""lmms-eval plugin: every kit method inside lmms-eval 0.7 (``lmms-eval --model prunevid_llava_onevision ...``).

- ``models``: the three ``lmms`` models (``prunevid_llava_onevision``, ``prunevid_qwen2_5_vl``,
  ``prunevid_llava_next_video``), thin wrappers over ``prunevid.models.load``, ``prunevid.video`` and
  ``prunevid.apply`` that decode greedily as the kit's runner does under ``--protocol lmms-eval``;
- ``manifests``: what the entry-point group ``lmms_eval.models`` in ``pyproject.toml`` points at (lmms-eval reads
  it when its model registry is built, so this costs nothing until a plugin model is asked for);
- ``stats_log``: the per-sample statistics written beside lmms-eval's sample logs, and their summary;
- ``synthetic_task`` and ``tasks/prunevid_synthetic/``: the kit's synthetic benchmark as an lmms-eval task folder
  (``--include_path`` ``TASKS_DIR``), local data, no hub.

Nothing here is imported by the kit itself; this module imports no lmms-eval code, so ``TASKS_DIR`` can be read
where lmms-eval is not installed. Install lmms-eval with ``scripts/install_lmms_eval.sh`` (``make lmms-eval``).
"""
from __future__ import annotations

import os

# plugin model name -> the kit's registry entry (``prunevid.models``) of the checkpoints it takes
MODEL_ARCHITECTURES = {
    "prunevid_llava_onevision": "llava_onevision",     # LLaVA-OneVision and LLaVA-Video, Hugging Face format
    "prunevid_qwen2_5_vl": "qwen2_vl",                 # Qwen2.5-VL (and Qwen2-VL: one registry entry)
    "prunevid_llava_next_video": "llava_next_video",
}
MODEL_NAMES = tuple(MODEL_ARCHITECTURES)

# the task folder to pass to lmms-eval's --include_path (the kit's synthetic benchmark: task prunevid_synthetic)
TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
SYNTHETIC_TASK = "prunevid_synthetic"

__all__ = ["MODEL_ARCHITECTURES", "MODEL_NAMES", "TASKS_DIR", "SYNTHETIC_TASK"]
