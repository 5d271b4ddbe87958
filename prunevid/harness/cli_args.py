"""Argument helpers shared by the command modules: ``--set key=value`` pairs and the ``--device`` check."""
from __future__ import annotations


def parse_set(pairs, flag: str = "--set") -> dict:
    """``--set key=value`` pairs -> ``{key: "value"}`` (strings: the method's config types them by its field
    annotations, ``prunevid.methods.make_config``). A pair without ``=`` is a ``ValueError`` naming ``flag``."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = raw.strip()
    return out


def check_device(device: str) -> None:
    """A device this machine cannot use is a one-line error (torch raises an AssertionError deep in ``.to()``)."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available (torch {torch.__version__}"
                             f"{' is a CPU build' if torch.version.cuda is None else ' sees no GPU'}); "
                             f"use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
