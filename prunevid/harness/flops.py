"""FLOPs of a video-LLM prefill, three ways: an analytic formula, fvcore, and torch's ``FlopCounterMode``.

Conventions (``docs/measurement.md``):

* **MACs.** Every count here is in multiply-accumulates (one fused multiply-add = 1), fvcore's unit and the
  unit of the papers' formula. ``FlopCounterMode`` counts 2 per MAC; its numbers are halved on the way in
  (``FlopReport.macs``), and ``FlopReport.flops`` is 2 x MACs for every backend.
* **Analytic, two variants.** ``"paper"`` is the per-layer estimate of FastV and the PruneVid README,
  ``4nd^2 + 2n^2 d + 2ndm``. ``"exact"`` counts what a Llama/Qwen2 decoder layer really multiplies: the
  q/o projections (d x H*hd), the k/v projections of width ``kv_heads * head_dim`` (GQA), the full n x n
  attention scores and mixing (SDPA kernels and both counters ignore causality), and a 3-matrix SwiGLU FFN.
* **Schedules.** A run's count follows what its prefill recorded per decoder layer (``stats["layer_tokens"]``,
  ``analytic_from_run``); a count without a run follows the schedule the method declares
  (``Method.schedule``, ``analytic_ratio``). Layer indices follow ``interfaces.md``: PruneVid's
  ``selected_layer`` K is 0-indexed and inclusive (layers 0..K at the stage-1 length, K+1.. at the kept
  length); FastV's ``K`` is the number of layers at full length.
* **Parts.** The vision encoder (+ projector) is reported apart from the LLM; stage-1 merging and embedding
  lookups are ``other``; the LLM is the decoder stack, the ``lm_head`` is its own part.
* **Ratios** come from one backend only (``ratio`` refuses reports of different backends).
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .. import state as kit_state

# ----------------------------------------------------------------------------------------------------------
# Shapes and presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMShape:
    """The sizes of a Llama/Qwen2-style decoder that the formulas need."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    kv_heads: Optional[int] = None          # None = heads (no GQA)
    head_dim: Optional[int] = None          # None = hidden // heads
    vocab: Optional[int] = None
    ffn_matrices: int = 3                   # SwiGLU: gate, up, down

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @classmethod
    def from_config(cls, config) -> "LLMShape":
        """From a text config (``Qwen2Config``, ``LlamaConfig``) or a VLM config holding ``text_config``."""
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        return cls(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
                   ffn=config.intermediate_size, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=getattr(config, "vocab_size", None))


@dataclass(frozen=True)
class VisionShape:
    """A ViT encoder (CLIP / SigLIP) plus a 2-layer MLP projector into the LLM width."""

    hidden: int
    layers: int
    ffn: int
    image_size: int
    patch_size: int
    cls_token: bool = False
    projector_out: Optional[int] = None

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + int(self.cls_token)


@dataclass(frozen=True)
class Preset:
    """A real model's shape, its visual tokens per frame and frame count as the paper's table uses them."""

    name: str
    llm: LLMShape
    vision: VisionShape
    tokens_per_frame: int
    frames: int
    selected_layer: int                     # PruneVid's K for this model (0-indexed, inclusive)
    text_tokens: int = 100                  # typical prompt length, used when text is counted
    note: str = ""

    @property
    def visual_tokens(self) -> int:
        return self.tokens_per_frame * self.frames


PRESETS: Dict[str, Preset] = {
    "pllava-7b": Preset(
        "pllava-7b", LLMShape(hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000),
        VisionShape(hidden=1024, layers=24, ffn=4096, image_size=336, patch_size=14, cls_token=True,
                    projector_out=4096),
        tokens_per_frame=144, frames=16, selected_layer=10,
        note="PLLaVA-7B: Vicuna-7B LLM, CLIP ViT-L/14-336, 16 frames pooled to 16x12x12 = 2304 visual tokens"),
    "llava-ov-0.5b": Preset(
        "llava-ov-0.5b", LLMShape(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab=151936),
        VisionShape(hidden=1152, layers=26, ffn=4304, image_size=384, patch_size=14, projector_out=896),
        tokens_per_frame=196, frames=32, selected_layer=10,
        note="LLaVA-OneVision-0.5B: Qwen2-0.5B LLM, SigLIP-so400m (26 layers used), 196 tokens per frame"),
    "llava-ov-7b": Preset(
        "llava-ov-7b", LLMShape(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064),
        VisionShape(hidden=1152, layers=26, ffn=4304, image_size=384, patch_size=14, projector_out=3584),
        tokens_per_frame=196, frames=32, selected_layer=10,
        note="LLaVA-OneVision-7B: Qwen2-7B LLM, SigLIP-so400m (26 layers used), 196 tokens per frame"),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------------------
# Analytic formulas (MACs)
# ----------------------------------------------------------------------------------------------------------


def layer_macs_paper(n: float, d: int, m: int) -> float:
    """FastV / PruneVid README per-layer estimate: ``4nd^2 + 2n^2 d + 2ndm`` (QKVO, attention, 2-matrix FFN)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def layer_macs_exact(n: float, shape: LLMShape, kv_len: Optional[float] = None) -> float:
    """MACs of one decoder layer on ``n`` query tokens attending to ``kv_len`` keys (default ``n``).

    q/o projections ``2 n d H hd``, k/v projections ``2 n d Hkv hd`` (GQA), attention ``2 H hd n kv_len``
    (scores and mixing, no causal discount: what SDPA kernels and both counters count), FFN
    ``ffn_matrices * n d m``. Biases and element-wise work (norms, RoPE rotation, SiLU) are not counted.
    """
    kv_len = n if kv_len is None else kv_len
    d, hd = shape.hidden, shape.hd
    proj = 2 * n * d * shape.heads * hd + 2 * n * d * shape.kv * hd
    attn = 2 * shape.heads * hd * n * kv_len
    return proj + attn + shape.ffn_matrices * n * d * shape.ffn


def prunevid_scoring_macs(n: float, n_query: float, shape: LLMShape) -> float:
    """Stage-2 scoring at layer K (``prunevid.layer_pruner.score_at_layer``): q for the ``n_query`` post-video rows,
    k for all ``n`` tokens, and the (H, n_query, n) logits."""
    d, hd = shape.hidden, shape.hd
    return n_query * d * shape.heads * hd + n * d * shape.kv * hd + shape.heads * n_query * n * hd


def llm_prefill_macs(shape: LLMShape, seq_lens: Sequence[float], *, formula: str = "exact",
                     extra: float = 0.0) -> float:
    """Sum of per-layer MACs for ``seq_lens`` (one sequence length per decoder layer).

    ``formula``: ``"paper"`` (``4nd^2 + 2n^2 d + 2ndm``) or ``"exact"`` (GQA + SwiGLU, ``layer_macs_exact``).
    ``extra`` is added as is (e.g. ``prunevid_scoring_macs``).
    """
    if len(seq_lens) != shape.layers:
        raise ValueError(f"need one sequence length per layer ({shape.layers}), got {len(seq_lens)}")
    if formula == "paper":
        total = sum(layer_macs_paper(n, shape.hidden, shape.ffn) for n in seq_lens)
    elif formula == "exact":
        total = sum(layer_macs_exact(n, shape) for n in seq_lens)
    else:
        raise ValueError(f"formula must be 'paper' or 'exact', got {formula!r}")
    return total + extra


def vision_macs(vision: VisionShape, frames: int) -> float:
    """Approximate MACs of the vision encoder and projector for ``frames`` frames (paper-style per-layer
    formula with a 2-matrix GELU MLP, patch embedding, 2-layer MLP projector; norms and pooling ignored)."""
    n, d = vision.tokens, vision.hidden
    patches = (vision.image_size // vision.patch_size) ** 2
    per_frame = vision.layers * layer_macs_paper(n, d, vision.ffn) + patches * 3 * vision.patch_size ** 2 * d
    if vision.projector_out:
        p = vision.projector_out
        per_frame += n * (d * p + p * p)
    return frames * per_frame


def method_schedule(method: str, n_layers: int, n_visual: float, *, n_text: float = 0.0,
                    params: Optional[dict] = None, entering: Optional[float] = None,
                    kept: Optional[float] = None, config=None):
    """The layer schedule ``method`` declares (``Method.schedule``) for a prefill that was not run: its config from
    ``params`` (``methods.make_config``, the depth rule at ``n_layers``), or ``config`` as given (one already
    resolved for a model, as a run holds it), the counts a video would decide given as ``entering`` (visual tokens
    entering the LLM) and ``kept`` (after the in-LLM cut, or a cache's budget)."""
    from .. import methods
    cfg = config if config is not None else methods.make_config(method, params, n_layers=n_layers)
    return methods.build(method, cfg).schedule(n_layers, n_text, n_visual, entering=entering, kept=kept)


def analytic_ratio(shape: LLMShape, method: str, n_visual: float, *, n_text: float = 0.0,
                   formula: str = "paper", params: Optional[dict] = None, entering: Optional[float] = None,
                   kept: Optional[float] = None, config=None) -> dict:
    """Prefill MACs of ``method`` vs the unpruned model from its declared schedule (``method_schedule``; ``config``
    a resolved config instead of ``params``), one formula. Returns ``flops_ratio``, ``macs``, ``macs_unpruned``
    and the per-layer ``schedule`` (visual + text tokens each layer runs on). Token counts are not rounded: ratios
    averaged over a benchmark are fractional."""
    sched = method_schedule(method, shape.layers, n_visual, n_text=n_text, params=params, entering=entering,
                            kept=kept, config=config)
    seq = [t + n_text for t in sched.tokens]
    pruned = llm_prefill_macs(shape, seq, formula=formula)
    unpruned = llm_prefill_macs(shape, [n_visual + n_text] * shape.layers, formula=formula)
    return {"flops_ratio": pruned / unpruned, "macs": pruned, "macs_unpruned": unpruned, "formula": formula,
            "schedule": seq}


def paper_table() -> List[dict]:
    """The PruneVid README FLOPs column: PLLaVA-7B rows (reproduced, text excluded as the paper does) and
    LLaVA-OneVision-7B rows (computed under stated assumptions: 32 frames x 196 tokens, K=10, FastV K=2,
    text excluded; the paper states neither frames nor PruneVid's stage-1 ratio there)."""
    pl, ov = PRESETS["pllava-7b"], PRESETS["llava-ov-7b"]
    rows = []
    for p, method, paper, kw, assumption in (
        (pl, "prunevid", 0.23, dict(stage1_ratio=0.405, retained=0.162, selected_layer=10), "paper setting"),
        (pl, "fastv", 0.33, dict(fastv_k=2, retained=0.30), "paper setting"),
        (pl, "prumerge", 0.53, dict(retained=0.557), "paper setting; analytic at the paper's retained 0.557, not PruMerge's rule"),
        (ov, "prunevid", 0.20, dict(stage1_ratio=0.17 / 0.4, retained=0.17, selected_layer=10),
         "assumed: 32 frames, K=10, stage-1 ratio = 0.17/alpha(0.4)"),
        (ov, "fastv", 0.30, dict(fastv_k=2, retained=0.30), "assumed: 32 frames, FastV K=2"),
        (ov, "prumerge", 0.49, dict(retained=0.552), "assumed: 32 frames; analytic at the paper's retained 0.552"),
    ):
        sched = schedule_kwargs(method, p.visual_tokens, **kw)
        res = analytic_ratio(p.llm, method, p.visual_tokens, formula="paper", **sched)
        exact = analytic_ratio(p.llm, method, p.visual_tokens, formula="exact", **sched)
        rows.append({"preset": p.name, "method": method, "params": kw, "flops_ratio": res["flops_ratio"],
                     "flops_ratio_exact": exact["flops_ratio"], "paper": paper, "assumption": assumption,
                     "reproduced": abs(res["flops_ratio"] - paper) <= 0.02})
    return rows


def schedule_kwargs(method: str, n_visual: float, *, stage1_ratio: Optional[float] = None,
                    retained: Optional[float] = None, selected_layer: Optional[int] = None,
                    fastv_k: Optional[int] = None, **params) -> dict:
    """The ratios the papers state (``stage1_ratio``, ``retained``, PruneVid's K, FastV's K) as ``analytic_ratio``
    arguments: ``params`` for the method's config, ``entering`` / ``kept`` token counts over ``n_visual``.
    ``retained`` is the final visual share: what enters a pre-LLM method, what a FastV / PruneVid cut keeps,
    a cache method's KV budget."""
    params = dict(params)
    if selected_layer is not None:
        params["selected_layer"] = selected_layer
    if fastv_k is not None:
        params["K"] = fastv_k
    out = {"params": params}
    if method in ("prunevid", "fastv", "lookm"):
        if stage1_ratio is not None:
            out["entering"] = stage1_ratio * n_visual
        if retained is not None:
            out["kept"] = retained * n_visual
    elif retained is not None:
        out["entering"] = retained * n_visual
    return out


def stage1_ratio_for(shape: LLMShape, n_visual: float, target: float, *, retained: float, selected_layer: int,
                     n_text: float = 0.0, formula: str = "paper") -> Optional[float]:
    """The stage-1 ratio r1 (retained <= r1 <= 1) at which PruneVid's FLOPs ratio equals ``target``
    (bisection; ``None`` when no r1 in that range reaches it)."""
    def f(r1):
        return analytic_ratio(shape, "prunevid", n_visual, n_text=n_text, formula=formula,
                              **schedule_kwargs("prunevid", n_visual, stage1_ratio=r1, retained=retained,
                                                selected_layer=selected_layer))["flops_ratio"] - target
    lo, hi = retained, 1.0
    if f(lo) > 0 or f(hi) < 0:
        return None
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------------------------------
# Measured counts
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FlopReport:
    """One backend's count of one forward. ``parts`` (MACs): ``vision`` (tower + projector), ``llm``
    (decoder stack), ``lm_head``, ``other`` (embeddings, stage-1 merging, anything outside those)."""

    backend: str
    macs: float
    parts: Dict[str, float] = field(default_factory=dict)
    by_operator: Dict[str, float] = field(default_factory=dict)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def flops(self) -> float:
        return 2 * self.macs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["flops"] = self.flops
        return d


def ratio(pruned: FlopReport, unpruned: FlopReport, part: Optional[str] = "llm") -> float:
    """``pruned / unpruned`` for one part (or the totals with ``part=None``); both from the same backend."""
    if pruned.backend != unpruned.backend:
        raise ValueError(f"a FLOPs ratio needs one backend, got {pruned.backend!r} and {unpruned.backend!r}")
    if part is None:
        return pruned.macs / unpruned.macs
    return pruned.parts[part] / unpruned.parts[part]


def _cpu_sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _torch_custom_mapping() -> dict:
    """SDPA kernels that ``FlopCounterMode`` has no formula for (the CPU flash kernel on torch <= 2.13)."""
    from torch.utils.flop_counter import flop_registry
    aten = torch.ops.aten
    out = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry and op.default not in flop_registry:
            out[op] = _cpu_sdpa_formula
    return out


def _parts_from_module_counts(counts: dict, model: torch.nn.Module) -> Dict[str, float]:
    """Split ``FlopCounterMode.get_flop_counts()`` (FLOPs per module path) into parts, in MACs."""
    def total(key):
        return sum(counts.get(key, {}).values()) / 2

    root = type(model).__name__
    glob = total("Global")
    names = {"vision": [f"{root}.model.vision_tower", f"{root}.model.multi_modal_projector"],
             "llm": [f"{root}.model.language_model"], "lm_head": [f"{root}.lm_head"]}
    if not any(k.startswith(f"{root}.model.language_model") for k in counts):   # a bare decoder / causal LM
        names = {"llm": [f"{root}.model"] if f"{root}.model" in counts else [root], "lm_head": [f"{root}.lm_head"]}
    parts = {part: sum(total(k) for k in keys) for part, keys in names.items()}
    parts["other"] = glob - sum(parts.values())
    return parts


def count_torch(model: torch.nn.Module, inputs: dict, **forward_kwargs) -> FlopReport:
    """``FlopCounterMode`` around ``model(**inputs, **forward_kwargs)`` (a real forward: works on patched
    models, with caches and dict outputs). The CPU SDPA kernel's formula is registered for this count."""
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False, custom_mapping=_torch_custom_mapping())
    with torch.no_grad(), fc:
        model(**inputs, **forward_kwargs)
    counts = fc.get_flop_counts()
    by_op: Dict[str, float] = {}
    for op, v in counts.get("Global", {}).items():
        by_op[str(op)] = by_op.get(str(op), 0) + v / 2
    return FlopReport("torch", fc.get_total_flops() / 2, _parts_from_module_counts(counts, model), by_op,
                      note="FlopCounterMode (2 FLOPs per MAC), reported here in MACs")


# -- fvcore ------------------------------------------------------------------------------------------------


def _fvcore_sdpa_handle(inputs, outputs):
    """``aten::scaled_dot_product_attention``: B*H*Lq*Lk*(Dqk + Dv) MACs (scores and mixing; GQA keys may
    have fewer heads, the query's H counts)."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    b, h, lq, dqk = q[0], q[-3], q[-2], q[-1]
    return b * h * lq * k[-2] * (dqk + v[-1])


class _LMTraceWrapper(torch.nn.Module):
    """Tensor in, tensor out around a decoder stack for ``torch.jit`` tracing (fvcore). ``plan`` (a
    ``prunevid.layer_pruner.Stage2Plan``) re-arms PruneVid's stage 2 on ``pruner`` for the traced forward."""

    def __init__(self, lm, pruner=None, plan=None):
        super().__init__()
        self.lm, self.pruner, self.plan = lm, pruner, plan

    def forward(self, inputs_embeds, position_ids):
        armed = self.plan is not None and self.pruner is not None
        if armed:
            self.pruner.arm(dataclasses.replace(self.plan, keep=None, kept_visual=None, scores=None))
        try:
            out = self.lm(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False)
        finally:
            if armed:
                self.pruner.disarm()
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def count_fvcore_llm(lm: torch.nn.Module, inputs_embeds: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                     *, pruner=None, plan=None) -> FlopReport:
    """fvcore ``FlopCountAnalysis`` of a decoder stack (``model.model.language_model``) on given embeddings.

    SDPA is counted through a registered handle; ops fvcore has no formula for are listed in
    ``unsupported_ops`` (element-wise work: norms, RoPE rotation, SiLU, ...), not hidden. With ``pruner`` and
    ``plan`` PruneVid's stage 2 runs inside the traced forward, so the count is the real pruned prefill.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
    if position_ids is None:
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
    wrapper = _LMTraceWrapper(lm, pruner, plan).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(wrapper, (inputs_embeds, position_ids))
        fca.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa_handle)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            total = fca.total()
        by_op = {k: float(v) for k, v in fca.by_operator().items()}
        unsupported = dict(fca.unsupported_ops())
    return FlopReport("fvcore", float(total), {"llm": float(total)}, by_op, unsupported,
                      note="fvcore FlopCountAnalysis (1 per MAC) of the decoder stack, SDPA handle registered")


@contextlib.contextmanager
def capture_llm_inputs(model: torch.nn.Module):
    """Record what a (patched or not) VLM feeds its decoder stack: ``inputs_embeds``, ``position_ids``."""
    box: dict = {}
    lm = model.model.language_model

    def hook(module, args, kwargs):
        if "inputs_embeds" not in box:
            box["inputs_embeds"] = kwargs.get("inputs_embeds")
            box["position_ids"] = kwargs.get("position_ids")
    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        h.remove()


def count_fvcore(model: torch.nn.Module, inputs: dict, *, stage2: bool = True) -> FlopReport:
    """fvcore count of the LLM prefill of a LLaVA-OneVision model, patched or not.

    Runs the model once to capture the decoder's real input (the stage-1-shortened sequence on a PruneVid
    model), then traces the decoder stack on it; with ``stage2`` and a PruneVid plan, stage 2 runs in the
    trace. Only the ``llm`` part is counted (fvcore misses the SigLIP patch convolution, so the vision
    encoder is left to ``count_torch`` or the analytic formula).
    """
    with torch.no_grad(), capture_llm_inputs(model) as box:
        model(**inputs, logits_to_keep=1)
    plan = kit_state.last_plan(model) if stage2 else None
    embeds, pos = box["inputs_embeds"], box["position_ids"]
    if pos is None:
        pos = torch.arange(embeds.shape[1], device=embeds.device)[None]
    elif pos.dim() == 1:
        pos = pos[None]
    return count_fvcore_llm(model.model.language_model, embeds, pos,
                            pruner=kit_state.get(model).pruner if plan is not None else None, plan=plan)


# -- the analytic count of a measured run ------------------------------------------------------------------


def analytic_from_run(shape: LLMShape, stats: dict, *, n_query: Optional[int] = None, formula: str = "exact",
                      include_text: bool = True, counter_exact: bool = False, unpruned: bool = False) -> float:
    """Analytic LLM prefill MACs of a run, from its per-layer record (``stats["layer_tokens"]``, what
    ``prunevid.stats(model)`` holds after a prefill): each decoder layer at the visual tokens it ran on, plus the
    text. ``unpruned``: the same prompt with every visual token at every layer. ``counter_exact`` adds what the
    measured counters also see: an in-LLM cut's own scoring (``n_query`` query rows) at the layer where the
    record drops."""
    layer_tokens = stats.get("layer_tokens")
    if layer_tokens is None:
        raise ValueError("these statistics carry no per-layer record (layer_tokens): they are not from a prefill "
                         "of this kit version; use analytic_ratio with the method's declared schedule")
    if len(layer_tokens) != shape.layers:
        raise ValueError(f"the record has {len(layer_tokens)} layers, the shape {shape.layers}")
    n_text = stats["text_tokens"] if include_text else 0
    if unpruned:
        layer_tokens = [stats["visual_tokens_in"]] * shape.layers
    seq = [t + n_text for t in layer_tokens]
    extra = 0.0
    cut = next((i for i in range(len(seq) - 1) if seq[i + 1] < seq[i]), None)
    if counter_exact and n_query is not None and cut is not None and not unpruned:
        extra = prunevid_scoring_macs(seq[cut], n_query, shape)
    return llm_prefill_macs(shape, seq, formula=formula, extra=extra)


def flops_ratio_of_run(shape: LLMShape, stats: dict, *, formula: str = "exact",
                       include_text: bool = True) -> Optional[float]:
    """Prefill LLM MACs of a run over those of the same prompt unpruned, from the run's per-layer record;
    ``None`` when the statistics hold no record."""
    if stats.get("layer_tokens") is None or stats.get("text_tokens") is None:
        return None
    kw = dict(formula=formula, include_text=include_text)
    return analytic_from_run(shape, stats, **kw) / analytic_from_run(shape, stats, unpruned=True, **kw)


def fmt_macs(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


__all__ = ["LLMShape", "VisionShape", "Preset", "PRESETS", "preset", "layer_macs_paper", "layer_macs_exact",
           "llm_prefill_macs", "vision_macs", "method_schedule", "schedule_kwargs", "analytic_ratio", "paper_table",
           "stage1_ratio_for", "flops_ratio_of_run",
           "FlopReport", "ratio", "count_torch", "count_fvcore", "count_fvcore_llm", "capture_llm_inputs",
           "analytic_from_run", "prunevid_scoring_macs", "fmt_macs"]
