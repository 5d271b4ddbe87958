"""The plugin's lmms-eval models: ``prunevid_llava_onevision``, ``prunevid_qwen2_5_vl``, ``prunevid_llava_next_video``.

Each is a thin ``lmms_eval.api.model.lmms`` over the kit: ``prunevid.models.load`` (Hugging Face-format
checkpoints, the demo and tiny models), ``prunevid.video`` (frames and inputs) and ``prunevid.apply`` (any method
of ``prunevid.methods.available()``). One request is handled the way the kit's runner handles one item under
``--protocol lmms-eval`` (``prunevid.harness.item``): the clip's ``max_frames_num`` frames at
``np.linspace(0, n - 1, max_frames_num, dtype=int)``; the task's question (lmms-eval's ``doc_to_text``) after the
video in one user turn behind the system turn ``You are a helpful assistant.`` (lmms-eval's ``llava_onevision``
with its ``qwen_1_5`` conversation), rendered by the checkpoint's chat template; torch seeded before the request;
greedy decoding up to the task's ``max_new_tokens`` that stops at the checkpoint's end-of-sequence tokens; the
reply decoded without special tokens and stripped, as lmms-eval's ``llava_onevision`` returns it.

``--model_args`` (every key optional but ``pretrained``; any other key is an error naming the known ones):

==================  ============================================================================================
``pretrained``      checkpoint directory, hub id, or a kit registry name (``demo``, ``tiny``, ``tiny-qwen2.5-vl``...)
``method``          a name of ``prunevid.methods.available()`` (default ``none``: unpruned, statistics recorded)
method settings     every field of the method's config (``alpha``, ``tau``, ``selected_layer``, ``K``, ``R``...),
                    and ``retain`` (a matched budget, for the methods that take one); typed and checked by
                    ``prunevid.methods.make_config``, model-dependent defaults resolved as everywhere in the kit
``max_frames_num``  frames per video (default 32, as lmms-eval's ``llava_onevision``)
``dtype``           ``float32`` / ``bfloat16`` / ``float16`` (default: the runner's under ``--protocol lmms-eval``)
``device``          torch device (default ``cuda`` when available, else ``cpu``); lmms-eval passes ``--device``
``torch_seed``      torch seed set before every request (default 0, the runner's ``--seed``; ``seed`` is the
                    method's own setting where it has one: PruneVid's DPC-KNN noise, random keep's draw)
``output_path``     folder for the statistics files (default: beside lmms-eval's results, ``stats_log``)
``batch_size``      lmms-eval passes it to every model: 1 only (the kit patches one video per forward)
``max_batch_size``  lmms-eval passes it to every model: accepted, unused
``conv_template``   accepted, unused: the checkpoint's own chat template renders lmms-eval's ``qwen_1_5`` turns
``model_name``      accepted, unused: lmms-eval's ``llava_onevision`` picks its LLaVA builder with it
``device_map``      accepted; a single device (``cuda:0``) is used as ``device`` when that is not given, ``auto``
                    is ignored (one model per process; several GPUs = several lmms-eval processes)
==================  ============================================================================================
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import List, Optional, Tuple

import torch
from lmms_eval.api.model import lmms

from ... import apply, methods, models, video
# lmms-eval's llava_onevision: the system turn of its qwen_1_5 conversation (the kit's lmms-eval protocol uses it too)
from ...benchmarks.base import LMMS_SYSTEM
from ...harness import runner
from ...harness.cli_args import check_device
from ...harness.item import eos_ids, greedy_generate, needed_hints
from ...harness.results import versions
from ...patch import STATS_KEYS
from . import MODEL_ARCHITECTURES
from .stats_log import StatsLog, evaluation_context

# keys lmms-eval itself passes to every model, and those the baselines' own evaluation scripts pass
LMMS_EVAL_KEYS = ("batch_size", "max_batch_size", "device")
BASELINE_KEYS = ("conv_template", "model_name", "device_map")
PLUGIN_KEYS = ("pretrained", "method", "max_frames_num", "dtype", "torch_seed", "output_path")
# lmms-eval's llava_onevision generates up to 1024 new tokens when a task names no max_new_tokens
DEFAULT_MAX_NEW_TOKENS = 1024
# generation keys that do not change greedy decoding (dropped, as lmms-eval's llava_onevision drops them)
_IGNORED_GEN_KEYS = ("until", "temperature", "top_p", "top_k", "image_aspect_ratio")


def known_keys(method: str) -> List[str]:
    """Every ``--model_args`` key a plugin model takes with ``method``: its own, lmms-eval's, the baselines',
    and the method's settings (``retain`` among them where the method has a budget)."""
    fields = [f.name for f in dataclasses.fields(methods.config_class(method))]
    return sorted(set(PLUGIN_KEYS + LMMS_EVAL_KEYS + BASELINE_KEYS) | set(fields))


def greedy_settings(gen_kwargs: dict) -> dict:
    """The generation a task asks for (its YAML's ``generation_kwargs``) as the kit's greedy loop runs it:
    ``{"max_new_tokens", "do_sample": False, "num_beams": 1}``. Sampling or beam search is an error (the kit decodes
    greedily); ``until``, and ``temperature`` / ``top_p`` / ``top_k`` without sampling, change nothing and are
    dropped, as lmms-eval's ``llava_onevision`` drops them."""
    g = dict(gen_kwargs or {})
    if g.get("do_sample"):
        raise ValueError("the prunevid lmms-eval models decode greedily: this task asks for do_sample=True")
    if int(g.get("num_beams") or 1) != 1:
        raise ValueError(f"the prunevid lmms-eval models decode greedily: this task asks for num_beams="
                         f"{g.get('num_beams')}")
    unknown = sorted(set(g) - {"max_new_tokens", "do_sample", "num_beams", *_IGNORED_GEN_KEYS})
    if unknown:
        warnings.warn(f"generation settings {unknown} are not used by the prunevid lmms-eval models (greedy decoding "
                      f"up to max_new_tokens)", stacklevel=2)
    return {"max_new_tokens": int(g.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)), "do_sample": False, "num_beams": 1}


def _batch_size_one(value) -> None:
    if value is None:
        return
    if str(value).strip() != "1":
        raise ValueError(f"batch_size={value}: the prunevid lmms-eval models run one video per forward (the patch "
                         f"prunes one sequence at a time); use --batch_size 1, and several processes for throughput")


def _single_device(device_map) -> Optional[str]:
    """``device_map`` as a torch device when it names one (``cpu``, ``cuda``, ``cuda:1``), else None (``auto``...)."""
    if not isinstance(device_map, str) or device_map.strip().lower() in ("auto", "balanced", "sequential", ""):
        return None
    try:
        return str(torch.device(device_map))
    except (RuntimeError, TypeError):
        return None


class PruneVidLMM(lmms):
    """The shared model; subclasses name the kit architecture they take (``ARCH``) and their lmms-eval name."""

    NAME = ""
    ARCH = ""

    def __init__(self, pretrained: Optional[str] = None, method: str = "none", max_frames_num: int = 32,
                 dtype: Optional[str] = None, device: Optional[str] = None, batch_size=1, max_batch_size=None,
                 torch_seed: int = 0, output_path: Optional[str] = None, conv_template: Optional[str] = None,
                 model_name: Optional[str] = None, device_map: Optional[str] = None, **method_params) -> None:
        super().__init__()
        if pretrained is None:
            raise ValueError(f"{self.NAME}: model_args needs pretrained=<checkpoint directory, hub id or kit model "
                             f"name such as demo>")
        method = str(method)
        if method not in methods.available():
            raise ValueError(f"{self.NAME}: unknown method {method!r}; available: {methods.available()}")
        unknown = sorted(set(method_params) - set(known_keys(method)))
        if unknown:
            raise ValueError(f"{self.NAME}: unknown model_args key(s) {unknown}; known keys with method={method}: "
                             f"{known_keys(method)}")
        _batch_size_one(batch_size)
        # lmms-eval types every value (``0.4`` -> float, ``true`` -> bool); the kit's config builder types strings
        # by each field's annotation, so the values go back to the text the user wrote
        params = {k: (v if v is None else str(v)) for k, v in method_params.items()}
        methods.make_config(method, params)             # unknown setting / bad value: before any weights load
        max_frames_num = int(max_frames_num)
        if max_frames_num < 1:
            raise ValueError(f"{self.NAME}: max_frames_num must be >= 1, got {max_frames_num}")
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if device is None:
            device = _single_device(device_map)
        if self._world_size > 1 and str(device) != "cpu":
            # several processes (accelerate launch / torchrun): one GPU each, as lmms-eval's llava_onevision places them
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', self._rank))}"
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        check_device(str(device))
        pretrained = str(pretrained)
        peek = models.peek_defaults(pretrained)         # the architecture, before loading weights where readable
        if peek.get("arch") not in (None, self.ARCH):
            raise ValueError(self._wrong_model(pretrained, peek["arch"]))
        if dtype is None:
            dtype = models.default_dtype(peek, "lmms-eval")      # what the kit's runner picks under this protocol
        self.loaded = models.load(pretrained, dtype=str(dtype), device=str(device))
        if self.loaded.spec.name != self.ARCH:
            raise ValueError(self._wrong_model(pretrained, self.loaded.spec.name))
        cfg = methods.make_config(method, params, self.loaded.model)     # the model's defaults, the depth rule
        apply(self.loaded.model, cfg, method=method)
        runner.check_method_supported(self.loaded.model, method)    # e.g. VisionZip on Qwen: one line, here
        hints = needed_hints(self.loaded.model)
        if hints:
            raise ValueError(f"{self.NAME}: method {method!r} reads ground truth ({', '.join(hints)}) that lmms-eval "
                             f"does not give a model; run it with the kit's runner (python -m prunevid eval "
                             f"--benchmark synthetic --method {method})")
        self.method, self.config = method, cfg
        self.max_frames_num = max_frames_num
        self.torch_seed = int(torch_seed)
        self._device = torch.device(str(device))
        self._eos = eos_ids(self.loaded)
        self.conv_template, self.model_name, self.device_map = conv_template, model_name, device_map  # unused
        tracker, datetime_str = evaluation_context()
        self.stats_log = StatsLog(
            {"plugin_model": self.NAME, "pretrained": pretrained, "weights": self.loaded.fingerprint,
             "method": {"name": method, **cfg.to_dict()}, "max_frames_num": max_frames_num,
             "dtype": str(self.loaded.model.dtype).replace("torch.", ""), "device": str(self._device),
             "torch_seed": self.torch_seed, "versions": {**versions(), "lmms_eval": _lmms_eval_version()}},
            folder=output_path, tracker=tracker, datetime_str=datetime_str, rank=self._rank,
            world_size=self._world_size)

    # -- what lmms-eval reads ---------------------------------------------------------------------------
    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def _wrong_model(self, pretrained: str, arch: str) -> str:
        right = [name for name, a in MODEL_ARCHITECTURES.items() if a == arch]
        hint = f"use --model {right[0]}" if right else "the prunevid lmms-eval models take " + \
            ", ".join(f"{a} ({n})" for n, a in MODEL_ARCHITECTURES.items())
        return f"{self.NAME} takes {self.ARCH} checkpoints; {pretrained} is a {arch} checkpoint: {hint}"

    # -- one request -----------------------------------------------------------------------------------------
    def render(self, context: str) -> str:
        """The exact text the model receives for lmms-eval's question ``context`` (the video placeholder once):
        the kit's ``--protocol lmms-eval`` prompt, ``video.build_prompt`` with lmms-eval's system turn."""
        if "<image>" in context:
            # lmms-eval's llava_onevision takes a task's own <image> as where the video goes; the kit's chat
            # templates place the video before the text, and a literal <image> would be read as an image token
            raise ValueError("this task writes <image> into its question; the prunevid lmms-eval models place the "
                             "video before the question themselves and take questions without it")
        return video.build_prompt(self.loaded.tokenizer, context, system=LMMS_SYSTEM)

    @staticmethod
    def video_path(visual) -> str:
        """The request's one video file (what a video task's ``doc_to_visual`` returns: ``[path]``); anything else
        (images, several videos, nothing) is an error: the plugin runs video tasks."""
        paths = list(visual) if isinstance(visual, (list, tuple)) else [visual]
        if len(paths) != 1 or not isinstance(paths[0], str):
            kinds = sorted({type(p).__name__ for p in paths}) or ["nothing"]
            raise TypeError(f"the prunevid lmms-eval models take one video file per request, got {len(paths)} "
                            f"visual(s) of type {', '.join(kinds)}")
        return paths[0]

    def load_frames(self, path: str) -> Tuple[torch.Tensor, bool]:
        """(frames (T, H, W, 3) uint8, short): ``max_frames_num`` frames of the video file by lmms-eval's
        ``np.linspace`` sampling (``prunevid.video.load_video``), and whether the clip had fewer frames than asked
        (indices repeated, as ``np.linspace`` samples them)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", video.ShortClipWarning)
            frames = video.load_video(path, self.max_frames_num, sampling="linspace")
        short = [w for w in caught if issubclass(w.category, video.ShortClipWarning)]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return frames, bool(short)

    def respond(self, context: str, gen_kwargs: dict, visual, task: str, doc_id, split=None) -> Tuple[str, dict]:
        """One request -> (the text returned to lmms-eval, the statistics row). A video that cannot be read is an
        error row and an empty reply (the task scores it wrong), and the run goes on, as in the kit's runner."""
        torch.manual_seed(self.torch_seed)
        gen = greedy_settings(gen_kwargs)
        row = {"id": f"{task}/{doc_id}", "task": task, "doc_id": doc_id, "split": split, "category": task,
               "prediction": None, "parsed": None, "answer": None, "correct": None, "error": None}
        t0 = time.perf_counter()
        rendered = self.render(context)
        row["prompt"] = rendered
        path = self.video_path(visual)               # not a video task: an error that stops the run
        try:
            frames, short = self.load_frames(path)
        except (OSError, ValueError) as e:          # missing / corrupt / unreadable video: recorded, the run goes on
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            row.update(error=f"{type(e).__name__}: {msg}", time_s=time.perf_counter() - t0)
            return "", row
        if short:
            row["short_clip"] = True
        inputs = video.build_inputs(self.loaded, frames, context, system=LMMS_SYSTEM, rendered=rendered)
        tokens, stats, prefill_ms, decode_ms = greedy_generate(self.loaded.model, inputs, gen["max_new_tokens"],
                                                               self._eos)
        text = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        row["prediction"] = text
        row.update({k: stats.get(k) for k in tuple(STATS_KEYS) + ("flops_prefill", "flops_ratio")})
        # and whatever else the runner's FLOPs reading gives (harness.item.prefill_flops), so the rows stay alike
        row.update({k: v for k, v in stats.items() if k.startswith("flops_") and k not in row})
        row.update(prefill_ms=prefill_ms, decode_ms_per_token=decode_ms, new_tokens=len(tokens),
                   time_s=time.perf_counter() - t0)
        return text.strip(), row

    def generate_until(self, requests) -> List[str]:
        """lmms-eval's generation requests, in their order: each ``args`` is (question, generation kwargs,
        ``doc_to_visual``, doc_id, task, split); the doc is ``self.task_dict[task][split][doc_id]``."""
        from tqdm import tqdm
        out = []
        try:
            for req in tqdm(requests, disable=self.rank != 0, desc=f"{self.NAME} ({self.method})"):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
                visual = doc_to_visual(self.task_dict[task][split][doc_id])
                text, row = self.respond(context, gen_kwargs, visual, task, doc_id, split)
                self.stats_log.add(row)
                out.append(text)
        finally:
            self.stats_log.write_summary()          # also after a failure: what ran is summarised
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.NAME} answers generation tasks (output_type: generate_until); "
                                  f"log-likelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.NAME} answers single-turn generation tasks; multi-round tasks are not "
                                  f"supported")


def _lmms_eval_version() -> Optional[str]:
    try:
        from importlib.metadata import version
        return version("lmms-eval")
    except Exception:                       # metadata missing (a source checkout): the version is just not recorded
        return None


class PruneVidLlavaOneVision(PruneVidLMM):
    """``prunevid_llava_onevision``: Hugging Face-format LLaVA-OneVision and LLaVA-Video checkpoints (and the kit's
    ``demo`` / ``tiny`` models)."""

    NAME = "prunevid_llava_onevision"
    ARCH = MODEL_ARCHITECTURES[NAME]


class PruneVidQwen2_5_VL(PruneVidLMM):
    """``prunevid_qwen2_5_vl``: Qwen2.5-VL (and Qwen2-VL) checkpoints."""

    NAME = "prunevid_qwen2_5_vl"
    ARCH = MODEL_ARCHITECTURES[NAME]


class PruneVidLlavaNextVideo(PruneVidLMM):
    """``prunevid_llava_next_video``: LLaVA-NeXT-Video checkpoints."""

    NAME = "prunevid_llava_next_video"
    ARCH = MODEL_ARCHITECTURES[NAME]
