"""MkDocs hooks (``hooks:`` in mkdocs.yml): make pages written for GitHub work in the site.

- Links from a docs page to README.md, ARCHITECTURE.md or BENCHMARKS.md (``../BENCHMARKS.md``,
  which GitHub follows) point at their site copies, and links to other repository files
  become plain text (:func:`gen_reference.site_links`).
- A list or table right after a paragraph line gets the blank line Python-Markdown needs.
- Sphinx roles left in docstrings (``:class:`~attendo.x.Y```) render as plain code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "attendo_docs_gen_reference", Path(__file__).with_name("gen_reference.py"))
gen_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_reference)

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)(~?)([^<]*)(</code>)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    src_dir = Path("docs", page.file.src_uri).parent.as_posix()
    markdown = gen_reference.site_links(markdown, src_dir)
    return gen_reference.blank_line_before_blocks(markdown)


def on_page_content(html: str, page, config, files) -> str:
    def short(m: re.Match) -> str:  # Sphinx's ~ shows the last part of the name only
        name = m.group(3).rsplit(".", 1)[-1] if m.group(2) else m.group(3)
        return f"{m.group(1)}{name}{m.group(4)}"

    return _ROLE.sub(short, html)
