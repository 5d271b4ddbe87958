"""EgoSchema: ``DATAS/ego_schema/json/egoschema_fullset.json`` + ``videos/<q_uid>.mp4`` (prunevid-method.md §5.5).

``egoschema`` runs the full set (5031): the 500 items with a public answer (the subset) are scored locally,
and every run also writes ``submission.json`` (``{q_uid: answer index}``, the official upload format) in
its output folder. ``egoschema-subset`` runs only the 500 scored items.
"""
from __future__ import annotations

import os
from typing import List, Optional

from .base import LETTERS, LMMS_SYSTEM, Benchmark, Item, Prompt, load_json, official_mc_prompt
from .mvbench import SYSTEM  # the official eval.sh uses conv_mode=eval_mvbench for EgoSchema

LMMS_POST = "\nAnswer with the option's letter from the given choices directly."
FULL_TOTAL, SUBSET_TOTAL = 5031, 500


class EgoSchema(Benchmark):
    name = "egoschema"
    folder = "ego_schema"
    data_script = "egoschema"
    subset_only = False

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.root(data_root), "json", "egoschema_fullset.json")]

    def list_items(self, data_root: str) -> List[Item]:
        root = self.root(data_root)
        items = []
        for row in load_json(os.path.join(root, "json", "egoschema_fullset.json")):
            q_uid = row.get("q_uid") or os.path.splitext(row["video"])[0]
            answer = row.get("answer") or None
            if self.subset_only and answer is None:
                continue
            items.append(Item(id=q_uid, category="subset" if answer is not None else "fullset",
                              video=os.path.join(root, "videos", row["video"]), question=row["question"],
                              candidates=list(row["candidates"]), answer=answer, extra={"q_uid": q_uid}))
        return items

    def prompt(self, item: Item, protocol: str) -> Prompt:
        if protocol == "official":
            return official_mc_prompt(SYSTEM, item)
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.candidates))
        return Prompt(system=LMMS_SYSTEM, text=item.question + "\n" + options + LMMS_POST)


    def finalize(self, rows: List[dict], items: List[Item], output_dir: str):
        """Writes ``OUTPUT_DIR/submission.json`` (``{q_uid: answer index}``, the server's upload format), whole or
        not at all (a temporary file renamed over it)."""
        import json
        path = os.path.join(output_dir, "submission.json")
        with open(path + ".tmp", "w") as f:
            json.dump(submission(rows), f, indent=1)
        os.replace(path + ".tmp", path)
        return rows, None


class EgoSchemaSubset(EgoSchema):
    name = "egoschema-subset"
    subset_only = True


def submission(rows: List[dict]) -> dict:
    """``{q_uid: index}`` for every item with a parsed letter (the upload format of the EgoSchema server)."""
    out = {}
    for r in rows:
        letter = r.get("parsed")
        if letter and letter in LETTERS[:5]:
            out[r["id"]] = LETTERS.index(letter)
    return out


# ---------------------------------------------------------------------------------------------------------
# Submission of the full set to the EgoSchema validation server (never needed by the kit itself).
SUBMIT_URL = "https://validation-server.onrender.com/api/upload/"


def submit(path: str, url: Optional[str] = None, *, retries: int = 3, backoff_s: float = 5.0,
           timeout_s: float = 60.0) -> dict:
    """POST a ``{q_uid: index}`` file to the EgoSchema server; returns ``{"response", "accuracies"}``.

    The server (a free-tier host) often answers 500 or times out: it is retried with back-off, and a final
    failure raises ``RuntimeError`` with one line saying what happened; the file is left untouched.
    """
    import json
    import re
    import time
    import urllib.error
    import urllib.request
    url = url or os.environ.get("PRUNEVID_EGOSCHEMA_URL") or SUBMIT_URL
    with open(path) as f:
        answers = json.load(f)
    if not isinstance(answers, dict) or not all(isinstance(v, int) and 0 <= v <= 4 for v in answers.values()):
        raise ValueError(f"{path} is not a submission file ({{q_uid: 0..4}})")
    body = json.dumps(answers).encode()
    last = None
    for attempt in range(retries):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                text = resp.read().decode(errors="replace")
            accs = [float(x) for x in re.findall(r"accuracy[^0-9]*([0-9]+(?:\.[0-9]+)?)", text, flags=re.I)]
            return {"response": text, "accuracies": accs}
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt + 1 < retries:
            time.sleep(backoff_s * (attempt + 1))
    raise RuntimeError(f"EgoSchema submission to {url} failed after {retries} tries ({last}); {path} is kept, "
                       f"retry later or upload it through Kaggle (competition egoschema-public)")


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="post an EgoSchema submission.json to the validation server")
    p.add_argument("path", help="submission.json written by `eval --benchmark egoschema`")
    p.add_argument("--url", default=None, help=f"server URL (default: $PRUNEVID_EGOSCHEMA_URL or {SUBMIT_URL})")
    p.add_argument("--retries", type=int, default=3)

    def run(args):
        try:
            out = submit(args.path, args.url, retries=args.retries)
        except RuntimeError as e:
            raise ValueError(str(e)) from None        # printed as one "error: ..." line by the CLI
        print(out["response"].strip())
        return 0

    p.set_defaults(func=run)
