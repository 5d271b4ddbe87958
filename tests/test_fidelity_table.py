"""docs/fidelity.md covers everything the kit could do differently from the authors' code: a row for every
configuration field of every method and for every protocol option, each with one of the verdicts ("kit reference" for
a method of the kit's own with no upstream, the oracle)."""
import dataclasses
import os
import re

import pytest

from prunevid import methods
from prunevid.benchmarks import ProtocolOptions

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "fidelity.md")
# "kit reference": a method of the kit's own with no upstream to be faithful to (the oracle)
VERDICTS = ("identical", "documented adaptation", "named option", "kit reference")


def sections() -> dict:
    """``### `name``` heading -> the rows of the table under it, as lists of cells."""
    out, name = {}, None
    with open(DOC) as f:
        for line in f:
            m = re.match(r"^###\s+`([^`]+)`", line)
            if m:
                name = m.group(1)
                out[name] = []
            elif name and line.startswith("|") and not re.match(r"^\|\s*(aspect|-)", line):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                out[name].append(cells)
    return out


def test_every_row_has_four_cells_and_a_verdict():
    for name, rows in sections().items():
        assert rows, f"section {name} has no table"
        for cells in rows:
            assert len(cells) == 4, (name, cells)
            assert any(cells[3].startswith(v) for v in VERDICTS), (name, cells[3])


@pytest.mark.parametrize("method", methods.available())
def test_every_config_field_has_a_row(method):
    rows = sections().get(method)
    assert rows, f"docs/fidelity.md has no section ### `{method}`"
    aspects = " ".join(cells[0] for cells in rows)
    cls = methods.config_class(method)
    fields = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
    missing = [f for f in fields if f"`{f}`" not in aspects]
    assert not missing, f"{method}: no row for {missing}"


def test_every_protocol_option_has_a_row():
    rows = sections().get("official")
    assert rows, "docs/fidelity.md has no section ### `official`"
    aspects = " ".join(cells[0] for cells in rows)
    missing = [o for o in ProtocolOptions.CHOICES if f"`{o}`" not in aspects]
    missing += [o for o in ("--lora-alpha", "--dtype") if f"`{o}`" not in aspects]
    assert not missing, f"official protocol: no row for {missing}"
    assert sections().get("lmms-eval"), "docs/fidelity.md has no section ### `lmms-eval`"
