"""Model directories saved by an older attendo (tests/legacy, made by tests/legacy/make.py at
the commit named in made_by.txt) load and decode exactly as that code decoded them: greedy
outputs, and beam-5 3-best lists with their scores (printed to 4 decimals). A refactor that
changes parameter names, the config schema, the step interface or the search changes these.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attendo.cli import main

LEGACY = Path(__file__).parent / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text(encoding="utf-8"))


def _parse(line: str) -> tuple[str, float | None]:
    if " ||| " not in line:
        return line, None
    i, text, score = line.split(" ||| ")
    return f"{i} ||| {text}", float(score)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("beam", [1, 5])
def test_a_model_saved_before_decodes_as_it_did(name, beam, tmp_path):
    model = tmp_path / name  # a copy: loading must not need to write into the directory
    model.mkdir()
    for f in (LEGACY / name).iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out.txt"
    args = ["translate", "--model", str(model), "--beam", str(beam),
            "--input", str(LEGACY / "inputs.txt"), "--output", str(out)]
    if beam > 1:
        args += ["--n-best", "3"]
    assert main(args) == 0
    got = [_parse(x) for x in out.read_text(encoding="utf-8").splitlines()]
    want = [_parse(x) for x in EXPECTED[name][f"beam{beam}"]]
    assert [g[0] for g in got] == [w[0] for w in want]  # the same hypotheses, in order
    for (_, g), (_, w) in zip(got, want):
        # printed to 4 decimals: equal up to the last digit's rounding
        assert (g is None and w is None) or abs(g - w) <= 1e-4 + 1e-9, (g, w)
