"""Run the tutorials in docs/tutorials/ and write each as a Markdown page with its outputs.

    python docs/run_tutorials.py [--budget tiny|default|long] [--out DIR] [--runs DIR] [NAMES...]

Run it from the repository's folder (the images tutorial reads configs/digits.yaml).

Each tutorial is a jupytext "percent" script (``# %% [markdown]`` cells of commented Markdown,
``# %%`` code cells), so it also opens as a notebook in Jupyter (with jupytext) or VS Code.
This runner executes a script's code cells in order in one namespace, as a notebook kernel
would, with ``ATTENDO_TUTORIAL_BUDGET`` and ``ATTENDO_TUTORIAL_OUT`` set, and writes
``DIR/NN_name.md``: the Markdown cells as they are, each code cell as a ```python block, what
it printed as a ```text block, and every picture it passed to ``show(path)`` (a function this
runner puts in the namespace) copied to ``DIR/NN_name_files/`` and embedded.

- ``--budget``: ``tiny`` (CI: a few updates, every cell and picture, seconds), ``default``
  (what a student runs: a few minutes on a laptop CPU each) or ``long`` (about 10x that).
- ``--out``: where the pages go (default: docs/tutorials, beside the scripts).
- ``--runs``: where the tutorials write their models and pictures, one folder per tutorial
  (default: runs/tutorials; ``ATTENDO_TUTORIAL_OUT`` is ``RUNS/NN_name``).
- ``--scripts``: the folder of the ``NN_name.py`` scripts (default: docs/tutorials).
- ``NAMES``: which tutorials (``01``, ``01_no_attention``, ``no_attention`` or the file
  name); all of them when none is given.

A cell that raises stops the run: the script and cell number are named and the exit status
is 1 (the page of that tutorial is not written). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIALS = HERE / "tutorials"
BUDGETS = ("tiny", "default", "long")
CELL = re.compile(r"^# %%(.*)$")
ENV = ("ATTENDO_TUTORIAL_BUDGET", "ATTENDO_TUTORIAL_OUT")


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    line: int  # 1-based line of its "# %%" marker in the script


@dataclass
class Result:
    cell: Cell
    output: str = ""
    pictures: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, contents)


def tutorial_scripts(folder: Path = TUTORIALS) -> list[Path]:
    """The tutorials, in order: ``NN_name.py`` files of ``folder``."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py") if p.is_file())


def parse_cells(text: str) -> list[Cell]:
    """The cells of a percent-format script. Lines before the first marker (a header of
    comments such as ``# ruff: noqa``) are not a cell. A Markdown cell's lines lose their
    leading ``# `` (or a bare ``#``); blank lines around a cell are dropped."""
    cells: list[Cell] = []
    kind, lines, start = None, [], 0
    for n, line in enumerate(text.splitlines(), 1):
        m = CELL.match(line)
        if m:
            if kind is not None:
                cells.append(_cell(kind, lines, start))
            kind = "markdown" if "[markdown]" in m.group(1) else "code"
            lines, start = [], n
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append(_cell(kind, lines, start))
    return [c for c in cells if c.source.strip()]


def _cell(kind: str, lines: list[str], start: int) -> Cell:
    if kind == "markdown":
        lines = [ln[2:] if ln.startswith("# ") else ln[1:] if ln.startswith("#") else ln
                 for ln in lines]
    return Cell(kind, "\n".join(lines).strip("\n"), start)


class CellError(Exception):
    def __init__(self, script: Path, number: int, cell: Cell):
        super().__init__(f"{script.name}: code cell {number} (line {cell.line}) raised")
        self.script, self.number, self.cell = script, number, cell


def run_script(script: Path, budget: str, out_dir: Path) -> list[Result]:
    """Execute the code cells of ``script`` in order in one fresh namespace, with the
    tutorial environment set; returns each cell with what it printed and showed."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({"ATTENDO_TUTORIAL_BUDGET": budget, "ATTENDO_TUTORIAL_OUT": str(out_dir)})
    try:
        return _run_cells(script)
    finally:  # the environment as it was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_cells(script: Path) -> list[Result]:
    current: list[tuple[str, bytes]] = []

    def show(path) -> None:
        """Record a picture (a PNG the cell wrote) to embed after this cell's output; its
        contents are kept now, so a later cell may write the same file again."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"show({str(path)!r}): no such file")
        current.append((p.name, p.read_bytes()))

    namespace: dict = {"__name__": "__main__", "show": show}
    results, number = [], 0
    for cell in parse_cells(script.read_text(encoding="utf-8")):
        result = Result(cell)
        results.append(result)
        if cell.kind != "code":
            continue
        number += 1
        current.clear()
        buf = io.StringIO()
        try:
            code = compile(cell.source + "\n", f"{script.name} [cell {number}]", "exec")
            with contextlib.redirect_stdout(buf):
                exec(code, namespace)
        except Exception as e:
            sys.stdout.write(buf.getvalue())  # what it printed before it failed
            raise CellError(script, number, cell) from e
        result.output = buf.getvalue()
        result.pictures = list(current)
    return results


def render(script: Path, results: list[Result], budget: str, out: Path) -> Path:
    """Write ``out/NN_name.md`` (and ``out/NN_name_files/*.png``) from the results."""
    stem = script.stem
    files = out / f"{stem}_files"
    shutil.rmtree(files, ignore_errors=True)
    note = (f"> Rendered by `docs/run_tutorials.py` at the `{budget}` budget: every output and "
            f"picture below was produced by running [{script.name}]({script.name}) "
            f"(`python docs/run_tutorials.py --budget {budget} {stem[:2]}`).")
    parts: list[str] = []
    names: set[str] = set()
    for r in results:
        if r.cell.kind == "markdown":
            if not parts and r.cell.source.startswith("# "):  # the title, then the note
                title, _, rest = r.cell.source.partition("\n")
                parts += [title, note] + ([rest.strip("\n")] if rest.strip() else [])
            else:
                parts.append(r.cell.source)
            continue
        if not parts:
            parts.append(note)
        parts.append(f"```python\n{r.cell.source}\n```")
        if r.output.strip():
            parts.append(f"```text\n{r.output.rstrip()}\n```")
        for original, contents in r.pictures:
            base, suffix = Path(original).stem, Path(original).suffix
            name, k = original, 1
            while name in names:  # two pictures of one name: keep both
                k += 1
                name = f"{base}-{k}{suffix}"
            names.add(name)
            files.mkdir(parents=True, exist_ok=True)
            (files / name).write_bytes(contents)
            parts.append(f"![{base}]({files.name}/{name})")
    if note not in parts:
        parts.insert(0, note)
    page = out / f"{stem}.md"
    page.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return page


def select(scripts: list[Path], names: list[str]) -> list[Path]:
    if not names:
        return scripts
    chosen = []
    for name in names:
        key = Path(name).stem
        hits = [s for s in scripts if key in (s.stem, s.stem[:2], s.stem[3:])]
        if not hits:
            raise SystemExit(f"run_tutorials: no tutorial {name!r}; there are: "
                             + ", ".join(s.stem for s in scripts))
        chosen += [s for s in hits if s not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAMES",
                    help="tutorials to run (01, 01_no_attention, no_attention); default: all")
    ap.add_argument("--budget", choices=BUDGETS, default="default",
                    help="training budget of every tutorial (default: default)")
    ap.add_argument("--out", type=Path, default=TUTORIALS,
                    help="folder for the rendered pages (default: docs/tutorials)")
    ap.add_argument("--runs", type=Path, default=Path("runs/tutorials"),
                    help="folder for the tutorials' models and pictures, one subfolder each "
                         "(default: runs/tutorials)")
    ap.add_argument("--scripts", type=Path, default=TUTORIALS,
                    help="folder of the NN_name.py scripts (default: docs/tutorials)")
    args = ap.parse_args(argv)
    scripts = select(tutorial_scripts(args.scripts), args.names)
    args.out.mkdir(parents=True, exist_ok=True)
    total = time.time()
    for script in scripts:
        t = time.time()
        print(f"run_tutorials: {script.name} ({args.budget}) ...", file=sys.stderr, flush=True)
        try:
            results = run_script(script, args.budget, args.runs / script.stem)
        except CellError as e:
            traceback.print_exception(e.__cause__, file=sys.stderr)
            print(f"run_tutorials: {e}; stopped", file=sys.stderr)
            return 1
        page = render(script, results, args.budget, args.out)
        print(f"run_tutorials: {script.name}: {time.time() - t:.1f} s -> {page}",
              file=sys.stderr, flush=True)
    print(f"run_tutorials: {len(scripts)} tutorial(s) in {time.time() - total:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
