"""The kit's synthetic benchmark (``--benchmark synthetic``, its test split) as the lmms-eval task
``prunevid_synthetic``: ``lmms-eval --include_path <TASKS_DIR> --tasks prunevid_synthetic``, offline.

The task folder (``tasks/prunevid_synthetic/``) holds its YAML, a ``utils.py`` that hands lmms-eval the hooks below,
and its docs, ``prunevid_synthetic_test.jsonl``: the split's items in the order of the kit's runner (round robin
over the seven tasks, so ``--limit N`` runs the same N items as the runner's ``--limit N``), each
``{"id", "category", "video", "question", "candidates", "answer"}`` with ``video`` relative to the split's folder.
The videos are not shipped: they are generated into the data root (``$PRUNEVID_DATA`` or ``./DATAS``, as the
runner's) on first use, deterministically from the split's seed, and the split's checksum (its ``meta.json``) must
equal the one the docs were written from (the YAML's ``split_checksum``), so docs and videos cannot drift apart.

Each hook is the kit's own rule under ``--protocol lmms-eval``: the question is ``Synthetic.prompt`` (MVBench's
lmms-eval text), the answer is scored by ``benchmarks.base.lmms_mc_score`` (unparsed = wrong) and the metric is the
accuracy in percent, as ``results.json``'s. Frames are the model's business in lmms-eval: run the plugin with
``max_frames_num=16`` (the split's videos hold 16 generated frames; the runner's default for this benchmark).

``python -m prunevid.integrations.lmms_eval.synthetic_task`` rewrites the docs and the checksum from a freshly
generated split (after a change to the generator).
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import List, Optional

from ...benchmarks import get as get_benchmark
from ...benchmarks.base import Item, lmms_mc_score
from . import SYNTHETIC_TASK, TASKS_DIR

TASK_DIR = os.path.join(TASKS_DIR, SYNTHETIC_TASK)
DOCS_FILE = os.path.join(TASK_DIR, f"{SYNTHETIC_TASK}_test.jsonl")
YAML_FILE = os.path.join(TASK_DIR, f"{SYNTHETIC_TASK}.yaml")
BENCHMARK = "synthetic"
DOC_FIELDS = ("id", "category", "video", "question", "candidates", "answer")


def data_root() -> str:
    """Where the split's videos are (generated on first use): the runner's data root."""
    from ...harness.runner import default_data_root
    return default_data_root()


def docs(root: str) -> List[dict]:
    """The synthetic test split under ``root`` (generated when missing) as lmms-eval docs, in the runner's order."""
    bench = get_benchmark(BENCHMARK)
    items = bench.items(root)
    split = bench.root(root)
    return [{"id": it.id, "category": it.category, "video": os.path.relpath(it.video, split).replace(os.sep, "/"),
             "question": it.question, "candidates": list(it.candidates), "answer": it.answer} for it in items]


def split_checksum(root: str) -> str:
    """The checksum of the synthetic test split under ``root`` (its ``meta.json``)."""
    bench = get_benchmark(BENCHMARK)
    with open(os.path.join(bench.root(root), "meta.json")) as f:
        return json.load(f)["checksum"]


def write_docs(root: str, path: str = DOCS_FILE, yaml_path: str = YAML_FILE) -> int:
    """Write the docs of the split under ``root`` to ``path`` and its checksum into the YAML; the number of docs."""
    rows = docs(root)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    with open(yaml_path) as f:
        text = f.read()
    text, n = re.subn(r'(split_checksum: )"[0-9a-f]*"', rf'\g<1>"{split_checksum(root)}"', text)
    if n != 1:
        raise ValueError(f"{yaml_path} holds no split_checksum line to update")
    with open(yaml_path, "w") as f:
        f.write(text)
    return len(rows)


def item_of(doc: dict, root: Optional[str] = None) -> Item:
    """The kit's ``Item`` for one doc; its video under the data root ``root`` (without one: the doc's relative path,
    enough for the prompt and the score)."""
    video = os.path.join(get_benchmark(BENCHMARK).root(root), doc["video"]) if root else doc["video"]
    return Item(id=doc["id"], category=doc["category"], video=video,
                question=doc["question"], candidates=list(doc["candidates"]), answer=doc["answer"])


@functools.lru_cache(maxsize=4)
def _ready_split(root: str, checksum: Optional[str]) -> str:
    """Generate the split under ``root`` once (a few seconds), and check it is the one the docs describe."""
    from ... import synthetic
    synthetic.ensure_split(root, "test")
    if checksum is not None and split_checksum(root) != checksum:
        raise ValueError(f"the synthetic test split under {root} (checksum {split_checksum(root)[:12]}...) is not the "
                         f"one the {SYNTHETIC_TASK} docs were written from ({checksum[:12]}...): rewrite them with "
                         f"`python -m prunevid.integrations.lmms_eval.synthetic_task`")
    return root


# -- the task's hooks (utils.py in the task folder) --------------------------------------------------------------
def doc_to_visual(doc: dict, lmms_eval_specific_kwargs: Optional[dict] = None) -> List[str]:
    """``[video path]`` under the data root, the split generated there first when missing."""
    checksum = (lmms_eval_specific_kwargs or {}).get("split_checksum")
    root = _ready_split(os.path.abspath(data_root()), checksum)
    return [item_of(doc, root).video]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: Optional[dict] = None) -> str:
    """The question the kit's runner asks under ``--protocol lmms-eval`` (``Synthetic.prompt``'s text)."""
    return get_benchmark(BENCHMARK).prompt(item_of(doc), "lmms-eval").text


def process_results(doc: dict, results: List[str]) -> dict:
    """The kit's lmms-eval scoring of the reply (``lmms_mc_score``: a leading or lone option letter; unparsed is
    wrong), kept per doc for the aggregation."""
    score = lmms_mc_score(item_of(doc), results[0])
    return {"prunevid_synthetic_accuracy": {"id": doc["id"], "category": doc["category"], "parsed": score.parsed,
                                            "correct": bool(score.correct)}}


def aggregate(rows: List[dict]) -> float:
    """Accuracy in percent over the docs, as the runner's ``metrics.accuracy``."""
    return 100.0 * sum(r["correct"] for r in rows) / len(rows) if rows else 0.0


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=f"Rewrite the {SYNTHETIC_TASK} docs and checksum from the synthetic test "
                                            f"split (generated under --data-root when missing).")
    p.add_argument("--data-root", default=None, help="default: $PRUNEVID_DATA or ./DATAS")
    args = p.parse_args(argv)
    n = write_docs(args.data_root or data_root())
    print(f"wrote {n} docs to {DOCS_FILE} and the split's checksum to {YAML_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
