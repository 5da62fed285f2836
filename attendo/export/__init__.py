"""Export a trained attendo model for deployment without attendo.

Two formats (``attendo export --model DIR --format ... -o OUT``):

- ``ctranslate2``: a CTranslate2 Transformer model directory built with CTranslate2's own
  model-spec API (:mod:`attendo.export.ct2`), with the tokenizer files copied beside it.
  Transformer encoder + Transformer decoder only.
- ``onnx``: ``encoder.onnx`` and ``decoder_step.onnx`` with the decoder's caches as explicit
  inputs and outputs (:mod:`attendo.export.onnx_graphs`), for the Transformer and the RNN
  decoder, plus :mod:`attendo.export.onnx_decode`, a greedy/beam loop over them in
  numpy + onnxruntime.

Both need the optional extra ``pip install attendo[export]``. What a format cannot run is
refused with :class:`ExportError`, naming the model setting and the reason.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from ..errors import AttendoError

FORMATS = ("ctranslate2", "onnx")
__all__ = ["FORMATS", "ExportError", "copy_tokenizer_files", "export_model"]


class ExportError(ValueError, AttendoError):
    """The model cannot be exported to the format asked for; the message says why."""


def copy_tokenizer_files(model_dir: str | Path, out: str | Path) -> list[str]:
    """Copy the tokenizer descriptions, their files (``*.spm.model``) and the vocabularies of
    ``model_dir`` into ``out``; returns the names copied."""
    names = []
    for path in sorted(Path(model_dir).iterdir()):
        if path.name.startswith(("src.", "tgt.")) and path.is_file() and path.suffix in (
                ".json", ".model"):
            shutil.copyfile(path, Path(out) / path.name)
            names.append(path.name)
    return names


def load_checked(model_dir: str | Path, fmt: str, check) -> tuple:
    """(config, Translator) of ``model_dir`` for ``--format fmt``: an ExportError when the
    package of that name is missing, or from ``check(cfg)`` before any weights load."""
    try:
        importlib.import_module(fmt)
    except ImportError:
        raise ExportError(f"--format {fmt} needs the {fmt} package: pip install "
                          "'attendo[export]'") from None
    from ..config import load_config
    from ..translator import Translator

    cfg = load_config(Path(model_dir) / "config.yaml")
    if cfg.data.src_type == "image":
        raise ExportError(f"{model_dir}: an image model (model.encoder: image); export covers "
                          "text models only: ONNX and CTranslate2 graphs here read token ids")
    check(cfg)
    return cfg, Translator.from_dir(model_dir)


def export_model(model_dir: str | Path, fmt: str, out: str | Path, **options) -> Path:
    """Export the model directory ``model_dir`` as ``fmt`` into the directory ``out``.

    options: ``quantization`` (ctranslate2: None, "int8", "int8_float32", "float16", ...;
    onnx: ignored), ``opset`` (onnx)."""
    if fmt == "ctranslate2":
        from .ct2 import export_ctranslate2

        return export_ctranslate2(model_dir, out, quantization=options.get("quantization"))
    if fmt == "onnx":
        from .onnx_graphs import export_onnx

        return export_onnx(model_dir, out, opset=options.get("opset") or 17)
    raise ExportError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
