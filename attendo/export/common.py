"""What both exporters share: their error type and the copy of the tokenizer files."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import AttendoError


class ExportError(ValueError, AttendoError):
    """The model cannot be exported to the format asked for; the message says why."""


def copy_tokenizer_files(model_dir: str | Path, out: str | Path) -> list[str]:
    """Copy the tokenizer descriptions, their files (``*.spm.model``) and the vocabularies of
    ``model_dir`` into ``out``; returns the names copied."""
    model_dir, out = Path(model_dir), Path(out)
    names = []
    for path in sorted(model_dir.iterdir()):
        if path.name.startswith(("src.", "tgt.")) and path.is_file() and path.suffix in (
            ".json", ".model"
        ):
            shutil.copyfile(path, out / path.name)
            names.append(path.name)
    return names
