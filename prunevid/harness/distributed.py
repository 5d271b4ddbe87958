"""Several processes on one run folder (torchrun / accelerate launch): ranks from the environment, gloo barriers,
and the per-rank sample shards rank 0 merges into ``samples.jsonl``."""
from __future__ import annotations

import os
import sys

from . import results


def dist_info():
    """(rank, world size) from torchrun's / accelerate's environment; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_dist() -> None:
    import datetime
    import torch.distributed as dist
    if not dist.is_initialized():
        # only barriers travel between ranks, so gloo works for CPU and GPU runs alike; items can take long
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))


def share(value, world: int):
    """Rank 0's ``value`` on every rank."""
    if world <= 1:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def shard_paths(output_dir: str) -> list:
    import glob
    return sorted(glob.glob(os.path.join(output_dir, "samples.rank*.jsonl")))


def logged_rows(output_dir: str, warn=None) -> dict:
    """{id: row} of samples.jsonl and every rank's shard (one row per id, ``RunWriter.read_samples``); what a
    log's reading skipped or de-duplicated is passed to ``warn`` as one line per file."""
    rows = {}
    for path in [os.path.join(output_dir, "samples.jsonl")] + shard_paths(output_dir):
        w = results.RunWriter(output_dir)
        w.samples_path = path
        for row in w.read_samples():
            rows.setdefault(row["id"], row)
        if warn is not None and w.problems():
            warn(w.problems())
    return rows


def all_done_ids(output_dir: str) -> set:
    """Ids logged in samples.jsonl or in any rank's shard (left by an interrupted multi-process run); damaged
    or duplicated lines are reported on stderr."""
    return set(logged_rows(output_dir, warn=lambda m: print(f"[eval] warning: {m}", file=sys.stderr, flush=True)))


def merge_shards(output_dir: str) -> int:
    """Append the rows of every rank shard to samples.jsonl (skipping ids already there), then remove the
    shards. Run by rank 0 after all ranks finished, and by any later run (a crashed multi-rank run's shards)."""
    main = results.RunWriter(output_dir)
    have = main.done_ids()
    n = 0
    for path in shard_paths(output_dir):
        shard = results.RunWriter(output_dir)
        shard.samples_path = path
        for row in shard.read_samples():
            if row["id"] not in have:
                main.append_sample(row)
                have.add(row["id"])
                n += 1
        os.unlink(path)
    return n
