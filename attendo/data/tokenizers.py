"""Tokenizers: text -> list of string pieces -> text.

Tokenizers deal in strings only; :class:`~attendo.data.vocab.Vocab` maps pieces to ids. A
tokenizer is stored in a model directory as ``{prefix}.tokenizer.json`` (its kind and file list)
plus whatever files it needs (``{prefix}.spm.model`` for SentencePiece).
"""

from __future__ import annotations

import io
import json
import random
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import sentencepiece as spm

from attendo.data.vocab import Vocab
from attendo.utils import atomic_write_bytes, atomic_write_text

TOKENIZER_KINDS = ("word", "char", "bpe", "unigram")


class Tokenizer(ABC):
    """Splits text into string pieces and joins pieces back into text."""

    kind: str

    @abstractmethod
    def encode(self, text: str) -> list[str]:
        """Split ``text`` into pieces."""

    @abstractmethod
    def decode(self, pieces: list[str]) -> str:
        """Join pieces into text; ``decode(encode(text))`` restores normalized text."""

    def files(self) -> dict[str, bytes]:
        """Files this tokenizer needs stored next to a model: name -> content."""
        return {}

    @classmethod
    def from_files(cls, kind: str, files: dict[str, bytes]) -> Tokenizer:
        """Rebuild a tokenizer of ``kind`` from the output of :meth:`files`."""
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


class WordTokenizer(Tokenizer):
    """Splits on whitespace and joins with single spaces.

    Input should already be tokenized (punctuation separated from words, e.g. by Moses or
    sacremoses); otherwise "dog." and "dog" become different vocabulary entries.
    """

    kind = "word"

    def encode(self, text: str) -> list[str]:
        return text.split()

    def decode(self, pieces: list[str]) -> str:
        return " ".join(pieces)


class CharTokenizer(Tokenizer):
    """One piece per character; a space becomes ``"▁"`` (U+2581) so that pieces stay visible.

    Runs of whitespace are not collapsed; text containing a literal ``"▁"`` decodes to a space.
    """

    kind = "char"
    SPACE = "\u2581"

    def encode(self, text: str) -> list[str]:
        return [self.SPACE if c == " " else c for c in text]

    def decode(self, pieces: list[str]) -> str:
        return "".join(pieces).replace(self.SPACE, " ")


class SentencePieceTokenizer(Tokenizer):
    """Subword tokenizer backed by a SentencePiece model (BPE or unigram LM).

    Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units" (BPE);
    Kudo 2018, "Subword Regularization" (unigram); Kudo and Richardson 2018 (SentencePiece).

    Args:
        model: the serialized SentencePiece model (the bytes of a ``.model`` file).
        kind: ``"bpe"`` or ``"unigram"``, recorded for the stored tokenizer description.
    """

    MODEL_FILE: ClassVar[str] = "spm.model"

    def __init__(self, model: bytes, kind: str) -> None:
        if kind not in ("bpe", "unigram"):
            raise ValueError(
                f"SentencePiece tokenizer kind must be 'bpe' or 'unigram', got {kind!r}"
            )
        self.kind = kind
        self.model = bytes(model)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model)

    def encode(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, pieces: list[str]) -> str:
        return self.sp.decode_pieces(list(pieces))

    def files(self) -> dict[str, bytes]:
        return {self.MODEL_FILE: self.model}

    @classmethod
    def from_files(cls, kind: str, files: dict[str, bytes]) -> SentencePieceTokenizer:
        if cls.MODEL_FILE not in files:
            raise ValueError(f"a {kind} tokenizer needs the file {cls.MODEL_FILE!r}")
        return cls(files[cls.MODEL_FILE], kind)

    @classmethod
    def train(
        cls,
        texts: list[str],
        kind: str,
        vocab_size: int,
        *,
        character_coverage: float = 1.0,
        seed: int = 0,
        max_sentences: int = 200_000,
    ) -> SentencePieceTokenizer:
        """Train a SentencePiece model in memory on ``texts``.

        Deterministic for equal inputs: when there are more than ``max_sentences`` texts, the
        sample is drawn here with ``random.Random(seed)`` instead of by SentencePiece's own
        unseeded reservoir sampling. ``vocab_size`` is an upper bound (``hard_vocab_limit`` is
        off) so that tiny corpora still train.
        """
        if kind not in ("bpe", "unigram"):
            raise ValueError(f"SentencePiece model type must be 'bpe' or 'unigram', got {kind!r}")
        sample = [t for t in texts if t.strip()]
        if not sample:
            raise ValueError("cannot train a tokenizer on no text (all training lines are empty)")
        if len(sample) > max_sentences:
            sample = random.Random(seed).sample(sample, max_sentences)
        spm.set_random_generator_seed(seed)
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample),
                model_writer=buf,
                model_type=kind,
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                num_threads=2,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                unk_id=0,
                hard_vocab_limit=False,
                input_sentence_size=0,  # all of `sample`, which is already subsampled
                shuffle_input_sentence=False,
                # spm skips longer sentences silently; ours are validated by read_parallel.
                max_sentence_length=1 << 16,
                minloglevel=2,
            )
        except RuntimeError as e:
            m = re.search(r"required_chars\. (\d+) vs (\d+)", str(e))
            if m:
                raise ValueError(
                    f"{kind} vocab_size={vocab_size} is too small: the training text needs at "
                    f"least {m.group(2)} pieces for its characters; increase vocab_size or "
                    "lower character_coverage"
                ) from None
            raise
        return cls(buf.getvalue(), kind)


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, *, seed: int = 0) -> Tokenizer:
    """Make a tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`), training it if needed.

    ``texts`` and ``vocab_size`` only matter for the SentencePiece kinds ("bpe", "unigram").
    """
    if kind == "word":
        return WordTokenizer()
    if kind == "char":
        return CharTokenizer()
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(texts, kind, vocab_size, seed=seed)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}")


_CLASSES: dict[str, type[Tokenizer]] = {
    "word": WordTokenizer,
    "char": CharTokenizer,
    "bpe": SentencePieceTokenizer,
    "unigram": SentencePieceTokenizer,
}


def save_tokenizer(tok: Tokenizer, directory: str | Path, prefix: str) -> None:
    """Store ``tok`` in ``directory`` as ``{prefix}.tokenizer.json`` plus its files, atomically.

    The extra files are written first, so a reader that finds the JSON finds its files too.
    """
    directory = Path(directory)
    files = tok.files()
    for name, data in files.items():
        atomic_write_bytes(directory / f"{prefix}.{name}", data)
    meta = {"kind": tok.kind, "files": sorted(files)}
    atomic_write_text(directory / f"{prefix}.tokenizer.json", json.dumps(meta, indent=2) + "\n")


def load_tokenizer(directory: str | Path, prefix: str) -> Tokenizer:
    """Load a tokenizer stored by :func:`save_tokenizer`."""
    directory = Path(directory)
    meta_path = directory / f"{prefix}.tokenizer.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_path}: tokenizer description not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in _CLASSES:
        raise ValueError(
            f"{meta_path}: unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}"
        )
    files = {}
    for name in meta.get("files", []):
        path = directory / f"{prefix}.{name}"
        try:
            files[name] = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: tokenizer file listed in {meta_path} is missing"
            ) from None
    return _CLASSES[kind].from_files(kind, files)


def build_vocab(
    tok: Tokenizer, texts: list[str], max_size: int | None = None, min_freq: int = 1
) -> Vocab:
    """Build the vocabulary of ``tok``'s pieces over ``texts`` (usually the training side).

    For SentencePiece tokenizers ``max_size`` and ``min_freq`` are ignored: the subword
    vocabulary was already sized by ``vocab_size``, and dropping pieces it can produce would only
    turn them into UNK. Pieces the model knows but that never occur in ``texts`` are left out, as
    their embeddings would never be trained.
    """
    if isinstance(tok, SentencePieceTokenizer):
        max_size, min_freq = None, 1
    return Vocab.build((tok.encode(t) for t in texts), max_size=max_size, min_freq=min_freq)
