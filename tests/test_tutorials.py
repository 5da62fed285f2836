"""The lecture's tutorials (docs/tutorials/NN_name.py, jupytext percent scripts) run at the
``tiny`` budget through their renderer, docs/run_tutorials.py, so they cannot rot.

Deliberately not marked ``slow``: CI (``.ci/run``, the whole suite) runs it. All tutorials run
in one subprocess on one thread (about a minute); each page is then checked against its
script: every code cell is there verbatim, a cell that prints has its output block, and every
picture a cell shows is embedded and is a PNG. The images tutorial needs scikit-learn (its
wheel holds the UCI digits) and is skipped, saying so, where it is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RENDERER = ROOT / "docs" / "run_tutorials.py"
SCRIPTS = sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))
NEEDS = {"07_images": "sklearn"}  # tutorial -> optional module it needs
PNG = b"\x89PNG\r\n\x1a\n"
BLOCK = re.compile(r"^```(python|text)\n(.*?)\n```$|^!\[[^\]]*\]\(([^)]+)\)$", re.M | re.S)

_spec = importlib.util.spec_from_file_location("attendo_docs_run_tutorials", RENDERER)
run_tutorials = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = run_tutorials  # its dataclasses look their module up
_spec.loader.exec_module(run_tutorials)


def show_calls(source: str) -> int:
    """How many times ``source`` calls show(...) in its text (not in comments or strings, not
    the fallback ``def show(path)`` for running outside the renderer)."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type in (tokenize.NAME, tokenize.OP)]
    return sum(1 for a, b, c in zip([None, *toks], toks, [*toks[1:], None])
               if b.string == "show" and c is not None and c.string == "("
               and (a is None or a.string != "def"))


def _runnable(script: Path) -> bool:
    needed = NEEDS.get(script.stem)
    return needed is None or importlib.util.find_spec(needed) is not None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Every runnable tutorial rendered at the tiny budget: (pages folder, the process)."""
    tmp = tmp_path_factory.mktemp("tutorials")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    names = [s.stem for s in SCRIPTS if _runnable(s)]
    proc = subprocess.run(
        [sys.executable, str(RENDERER), "--budget", "tiny", "--out", str(tmp / "pages"),
         "--runs", str(tmp / "runs"), *names],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return tmp / "pages", proc


def test_the_lecture_in_order():
    assert [s.stem[3:] for s in SCRIPTS] == [
        "no_attention", "attention", "scorers", "coverage", "copy", "transformer", "images"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_tutorial_runs_and_renders(rendered, script):
    if script.stem in NEEDS:
        pytest.importorskip(NEEDS[script.stem])
    pages, proc = rendered
    assert proc.returncode == 0, f"run_tutorials failed:\n{proc.stderr[-6000:]}"
    page = pages / f"{script.stem}.md"
    text = page.read_text(encoding="utf-8")
    assert "at the `tiny` budget" in text.split("\n\n", 3)[1]  # the header, under the title
    cells = [c for c in run_tutorials.parse_cells(script.read_text(encoding="utf-8"))
             if c.kind == "code"]
    blocks = [(m.group(1) or "image", m.group(2) if m.group(1) else m.group(3))
              for m in BLOCK.finditer(text)]
    code = [i for i, (kind, _) in enumerate(blocks) if kind == "python"]
    assert [blocks[i][1] for i in code] == [c.source for c in cells]  # every cell, verbatim
    for k, (i, cell) in enumerate(zip(code, cells), 1):
        after = blocks[i + 1 : code[k] if k < len(code) else len(blocks)]
        outputs = [b for kind, b in after if kind == "text"]
        pictures = [b for kind, b in after if kind == "image"]
        if "print(" in cell.source:
            assert len(outputs) == 1 and outputs[0].strip(), f"cell {k}: no output block"
        shows = show_calls(cell.source)
        assert len(pictures) >= shows, f"cell {k}: {shows} show() calls, {len(pictures)} pictures"
        for pic in pictures:
            f = page.parent / pic
            assert f.is_file() and f.read_bytes()[:8] == PNG, f"cell {k}: {pic} is not a PNG"
    assert any(kind == "image" for kind, _ in blocks), "a tutorial draws at least one picture"


def test_a_failing_cell_stops_the_run(tmp_path, capsys):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "99_broken.py").write_text(
        "# %% [markdown]\n# # Broken\n\n# %%\nprint('fine')\n\n# %%\n1 / 0\n", encoding="utf-8")
    before = {k: os.environ.get(k) for k in run_tutorials.ENV}
    status = run_tutorials.main(["--budget", "tiny", "--scripts", str(scripts),
                                 "--out", str(tmp_path / "pages"), "--runs", str(tmp_path / "r")])
    assert status == 1
    assert "99_broken.py: code cell 2 (line 7) raised" in capsys.readouterr().err
    assert not (tmp_path / "pages" / "99_broken.md").exists()
    assert {k: os.environ.get(k) for k in run_tutorials.ENV} == before  # restored


DEMO = """# ruff: noqa: E402

# %% [markdown]
# # Demo
#
# Some *text*.

# %%
import os
from pathlib import Path

out = Path(os.environ["ATTENDO_TUTORIAL_OUT"])
out.mkdir(parents=True)
(out / "a.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\nfake")
print(os.environ["ATTENDO_TUTORIAL_BUDGET"])
show(out / "a.png")

# %%
x = 1
"""


def test_cells_and_page(tmp_path):
    script = tmp_path / "01_demo.py"
    script.write_text(DEMO, encoding="utf-8")
    cells = run_tutorials.parse_cells(script.read_text(encoding="utf-8"))
    assert [c.kind for c in cells] == ["markdown", "code", "code"]
    assert cells[0].source == "# Demo\n\nSome *text*."
    results = run_tutorials.run_script(script, "long", tmp_path / "runs" / "01_demo")
    page = run_tutorials.render(script, results, "long", tmp_path / "pages").read_text()
    parts = page.split("\n\n")
    assert parts[0] == "# Demo" and "at the `long` budget" in parts[1]
    assert parts[2] == "Some *text*."
    assert "```text\nlong\n```" in page and "```python\nx = 1\n```\n" in page
    assert "![a](01_demo_files/a.png)" in page
    assert (tmp_path / "pages" / "01_demo_files" / "a.png").read_bytes().startswith(PNG)
    assert show_calls(cells[1].source) == 1
