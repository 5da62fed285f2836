"""The documentation cannot drift from the code: the generated configuration and command-line
references list every key and option there is, the README stays one screen and shows the
commands CI runs, and the site builds with no warning (broken links and anchors included)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attendo.cli import build_parser
from attendo.config import Config

REPO = Path(__file__).resolve().parents[1]
DEMO_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && "
                ".venv/bin/attendo demo")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """docs/gen_reference.py run into a temporary folder."""
    out = tmp_path_factory.mktemp("docs")
    subprocess.run([sys.executable, str(REPO / "docs" / "gen_reference.py"), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=120, cwd=REPO)
    return out


def config_keys(cls=Config, prefix: str = ""):
    """(dotted key, default) of every field of every config section, nested sections included."""
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(value):
            if prefix:  # a nested section (train.guided_alignment) is also a key of its parent
                yield key, None
            yield from config_keys(type(value), key + ".")
        elif prefix:
            yield key, value


def test_configuration_page_lists_every_key_with_its_default(generated):
    page = (generated / "reference" / "configuration.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*$", page, re.M)}
    keys = list(config_keys())
    assert len(keys) > 100 and "train.guided_alignment.shift" in dict(keys)
    for key, default in keys:
        assert key in rows, f"{key} is missing from the configuration reference"
        if default is not None:
            shown = f"`{json.dumps(default, ensure_ascii=False)}`"
            assert shown in rows[key], f"{key}: default {shown} not in {rows[key]!r}"
    documented = set(rows)
    assert documented == {k for k, _ in keys}, documented ^ {k for k, _ in keys}


def test_a_field_comment_is_read_from_the_source(generated):
    page = (generated / "reference" / "configuration.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| `data.vocab_size` |"))
    assert "sentencepiece pieces, or most frequent words/chars kept" in row  # trailing comment
    row = next(line for line in page.splitlines() if line.startswith("| `train.init_from` |"))
    assert "fine-tuning: a trained model directory to start from" in row  # lines above


def _commands(parser: argparse.ArgumentParser, line: str = "attendo"):
    yield line, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{line} {name}")


def test_cli_page_lists_every_subcommand_and_option(generated):
    page = (generated / "reference" / "cli.md").read_text(encoding="utf-8")
    sections = {}
    for chunk in re.split(r"^## ", page, flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body
    commands = list(_commands(build_parser()))
    assert len(commands) > 10
    for line, parser in commands:
        assert line in sections, f"{line} has no section in the CLI reference"
        body = sections[line]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                assert re.search(rf"`{re.escape(opt)}(?![\w-])", body), f"{line}: {opt} missing"
            if not action.option_strings:
                name = action.metavar or action.dest
                if action.choices is not None and action.metavar is None:
                    name = "{" + ",".join(map(str, action.choices)) + "}"
                assert f"`{name}" in body, f"{line}: positional {name} missing"


def test_readme_is_one_screen_with_the_commands_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    tests = [line for line in ci if "pytest" in line and not line.lstrip().startswith("#")]
    assert tests, ".ci/run runs no tests"
    for line in tests:
        assert line.strip() in readme.splitlines(), f"README lacks .ci/run's {line.strip()!r}"
    assert DEMO_COMMAND in readme.splitlines()  # the first quick-start command


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None
                        for m in ("mkdocs", "material", "mkdocstrings_handlers")),
                    reason="the docs tools are not installed (pip install -e '.[docs]')")
def test_site_builds_strict_without_warnings(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's end-of-life banner
    subprocess.run([sys.executable, "docs/gen_reference.py"], cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "WARNING" not in out, out[-4000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
