"""Tokenizers: text -> list of string pieces -> text (:class:`~attendo.data.vocab.Vocab` maps
pieces to ids). Stored in a model directory as ``{prefix}.tokenizer.json`` (its kind and file
list) plus the files it needs (``{prefix}.spm.model`` for SentencePiece)."""

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
from attendo.errors import UsageError
from attendo.files import ModelFileError, check_inside, read_regular_file
from attendo.utils import atomic_write_bytes, atomic_write_text

TOKENIZER_KINDS = ("word", "char", "bpe", "unigram", "hf")
MAX_TOKENIZER_JSON_BYTES = 1 << 20  # {prefix}.tokenizer.json is a few dozen bytes
MAX_TOKENIZER_FILE_BYTES = 64 << 20  # a 32k-piece SentencePiece model is under 1 MB
MAX_TOKENIZER_FILES = 16


class Tokenizer(ABC):
    """Splits text into string pieces and joins pieces back into text."""

    kind: str

    @abstractmethod
    def encode(self, text: str) -> list[str]: ...

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
    """Splits on whitespace and joins with single spaces. Input should already be tokenized
    (e.g. by Moses), otherwise "dog." and "dog" become different vocabulary entries."""

    kind = "word"

    def encode(self, text: str) -> list[str]:
        return text.split()

    def decode(self, pieces: list[str]) -> str:
        return " ".join(pieces)


class CharTokenizer(Tokenizer):
    """One piece per character; a space becomes ``"▁"`` (U+2581) so that pieces stay visible.
    Runs of whitespace are kept; a literal ``"▁"`` in the text decodes to a space."""

    kind = "char"
    SPACE = "\u2581"

    def encode(self, text: str) -> list[str]:
        return [self.SPACE if c == " " else c for c in text]

    def decode(self, pieces: list[str]) -> str:
        return "".join(pieces).replace(self.SPACE, " ")


class SentencePieceTokenizer(Tokenizer):
    """Subword tokenizer backed by a SentencePiece model (BPE: Sennrich et al. 2016; unigram
    LM: Kudo 2018; SentencePiece: Kudo and Richardson 2018). ``model`` is the bytes of a
    ``.model`` file, ``kind`` "bpe" or "unigram" (recorded in the stored description)."""

    MODEL_FILE: ClassVar[str] = "spm.model"

    def __init__(self, model: bytes, kind: str) -> None:
        if kind not in ("bpe", "unigram"):
            raise ValueError("SentencePiece tokenizer kind must be 'bpe' or 'unigram', "
                             f"got {kind!r}")
        self.kind, self.model = kind, bytes(model)
        if not self.model:  # SentencePieceProcessor(model_proto=b"") loads nothing, silently
            raise ValueError("not a SentencePiece model (the model is empty)")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.model)
        except RuntimeError as e:  # a protobuf that does not parse or is no valid model
            raise ValueError(f"not a SentencePiece model ({' '.join(str(e).split())})") from None
        if self.sp.get_piece_size() <= 0:
            raise ValueError("not a SentencePiece model (it has no pieces)")

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
    def train(cls, texts: list[str], kind: str, vocab_size: int, *,
              character_coverage: float = 1.0, seed: int = 0,
              max_sentences: int = 200_000) -> SentencePieceTokenizer:
        """Train a SentencePiece model in memory on ``texts``. Deterministic: more than
        ``max_sentences`` texts are sampled here with ``random.Random(seed)``, not by
        SentencePiece's unseeded reservoir. ``vocab_size`` is an upper bound
        (``hard_vocab_limit`` off) so that tiny corpora still train."""
        if kind not in ("bpe", "unigram"):
            raise ValueError(f"SentencePiece model type must be 'bpe' or 'unigram', got {kind!r}")
        sample = [t for t in texts if t.strip()]
        if not sample:
            raise UsageError("cannot train a tokenizer on no text (all training lines are empty)")
        if len(sample) > max_sentences:
            sample = random.Random(seed).sample(sample, max_sentences)
        spm.set_random_generator_seed(seed)
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample), model_writer=buf, model_type=kind,
                vocab_size=vocab_size, character_coverage=character_coverage, num_threads=2,
                bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, hard_vocab_limit=False,
                input_sentence_size=0,  # all of `sample`, which is already subsampled
                shuffle_input_sentence=False,
                # spm skips longer sentences silently; ours are validated by read_parallel
                max_sentence_length=1 << 16, minloglevel=2,
            )
        except RuntimeError as e:
            m = re.search(r"required_chars\. (\d+) vs (\d+)", str(e))
            if m:
                raise UsageError(
                    f"{kind} vocab_size={vocab_size} is too small: the training text needs at "
                    f"least {m.group(2)} pieces for its characters; increase vocab_size or "
                    "lower character_coverage"
                ) from None
            raise
        return cls(buf.getvalue(), kind)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer, from its ``tokenizer.json`` (brought by the
    user: ``data.tokenizer_model``). Its special tokens are not added; output pieces it does
    not know (attendo's ``<unk>``) are left out of the decoded text."""

    kind = "hf"
    FILE: ClassVar[str] = "hf.json"

    def __init__(self, data: bytes) -> None:
        try:
            from tokenizers import Tokenizer as HFTok
        except ImportError:
            raise UsageError("a Hugging Face tokenizer needs the tokenizers package: "
                             "pip install 'attendo[hf]'") from None
        try:
            self.tok = HFTok.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception type for a bad JSON
            raise ValueError(f"not a Hugging Face tokenizers JSON ({' '.join(str(e).split())})"
                             ) from None
        self.data = bytes(data)

    def encode(self, text: str) -> list[str]:
        return self.tok.encode(text, add_special_tokens=False).tokens

    def decode(self, pieces: list[str]) -> str:
        ids = [self.tok.token_to_id(p) for p in pieces]
        return self.tok.decode([i for i in ids if i is not None])

    def files(self) -> dict[str, bytes]:
        return {self.FILE: self.data}

    @classmethod
    def from_files(cls, kind: str, files: dict[str, bytes]) -> HFTokenizer:
        if cls.FILE not in files:
            raise ValueError(f"an hf tokenizer needs the file {cls.FILE!r}")
        return cls(files[cls.FILE])


_CLASSES: dict[str, type[Tokenizer]] = {"word": WordTokenizer, "char": CharTokenizer,
                                         "bpe": SentencePieceTokenizer,
                                         "unigram": SentencePieceTokenizer, "hf": HFTokenizer}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated")
        b = data[i]
        value, i, shift = value | (b & 0x7F) << shift, i + 1, shift + 7
        if b < 0x80:
            return value, i


def _fields(data: bytes):
    """(field number, value) of a protobuf message: ints for varints, bytes for the rest."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire in (1, 5):
            value, i = data[i : i + (8 if wire == 1 else 4)], i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, value


def sentencepiece_kind(model: bytes) -> str:
    """"unigram" or "bpe": the model type in a SentencePiece model's trainer spec (field 2 of
    ModelProto, its field 3; sentencepiece_model.proto). Its word and char types are not
    subword models attendo stores as such: a ValueError."""
    try:
        spec = next((v for f, v in _fields(model) if f == 2), b"")
        kind = next((v for f, v in _fields(spec) if f == 3), 1)  # proto default: UNIGRAM
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a SentencePiece model ({e})") from None
    if kind not in (1, 2):
        raise ValueError(f"a SentencePiece model of type {kind} (word or char); attendo takes "
                         "unigram or bpe models (for words or characters set data.tokenizer)")
    return "unigram" if kind == 1 else "bpe"


def read_tokenizer_file(path: str | Path) -> Tokenizer:
    """An existing tokenizer (``data.tokenizer_model``): a SentencePiece ``.model`` file (bpe or
    unigram) or a Hugging Face ``tokenizers`` JSON (``.json``). A file that is missing, too
    big or neither is a UsageError naming it."""
    path = Path(path)
    try:
        data = read_regular_file(path, "tokenizer model", MAX_TOKENIZER_FILE_BYTES)
    except (FileNotFoundError, ModelFileError) as e:
        raise UsageError(f"data.tokenizer_model: {e}") from None
    try:
        if path.suffix == ".json":
            return HFTokenizer(data)
        return SentencePieceTokenizer(data, sentencepiece_kind(data))
    except ValueError as e:
        raise UsageError(f"{path}: expected a SentencePiece .model or a Hugging Face "
                         f"tokenizers .json: {e}") from None


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, *, seed: int = 0) -> Tokenizer:
    """A tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`); ``texts`` and ``vocab_size``
    only matter for the SentencePiece kinds, which are trained on them."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; "
                         f"expected one of {list(TOKENIZER_KINDS)}")
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(texts, kind, vocab_size, seed=seed)
    return _CLASSES[kind]()


def save_tokenizer(tok: Tokenizer, directory: str | Path, prefix: str) -> None:
    """Store ``tok`` in ``directory`` as ``{prefix}.tokenizer.json`` plus its files, atomically
    (the files first, so a reader that finds the JSON finds its files too)."""
    directory = Path(directory)
    files = tok.files()
    for name, data in files.items():
        atomic_write_bytes(directory / f"{prefix}.{name}", data)
    meta = {"kind": tok.kind, "files": sorted(files)}
    atomic_write_text(directory / f"{prefix}.tokenizer.json", json.dumps(meta, indent=2) + "\n")


def load_tokenizer(directory: str | Path, prefix: str) -> Tokenizer:
    """Load a tokenizer stored by :func:`save_tokenizer`. The files the JSON lists must be
    regular files of bounded size inside ``directory`` (a name that leads elsewhere, or a FIFO,
    is refused unopened). Anything wrong is a :class:`~attendo.files.ModelFileError` (a
    FileNotFoundError when a file is missing) whose message starts with the file's path."""
    directory = Path(directory)
    meta_path = directory / f"{prefix}.tokenizer.json"
    check_inside(meta_path, directory, "tokenizer description")
    raw = read_regular_file(meta_path, "tokenizer description", MAX_TOKENIZER_JSON_BYTES)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f'{meta_path}: expected a JSON object {{"kind": ..., "files": '
                             f"[...]}}, got {type(meta).__name__}")
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in _CLASSES:
        raise ModelFileError(f"{meta_path}: unknown tokenizer kind {_short(kind)}; "
                             f"expected one of {list(TOKENIZER_KINDS)}")
    names = meta.get("files", [])
    if not isinstance(names, list) or len(names) > MAX_TOKENIZER_FILES or not all(
            isinstance(n, str) and n for n in names):
        raise ModelFileError(f"{meta_path}: 'files' must be a list of at most "
                             f"{MAX_TOKENIZER_FILES} file names, got {_short(names)}")
    try:
        root = directory.resolve()
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f"{directory}: cannot resolve the model directory ({e})") from None
    files = {}
    for name in names:
        path = directory / f"{prefix}.{name}"
        try:
            inside = path.resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # e.g. a symlink loop
            inside = False
        if not inside or "/" in name or "\\" in name:
            raise ModelFileError(f"{meta_path}: tokenizer file {_short(name)} is not a file "
                                 f"inside the model directory {directory}")
        try:
            files[name] = read_regular_file(path, "tokenizer file", MAX_TOKENIZER_FILE_BYTES)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: tokenizer file listed in {meta_path} is missing"
                                    ) from None
    try:
        return _CLASSES[kind].from_files(kind, files)
    except (ValueError, RuntimeError) as e:
        where = ", ".join(str(directory / f"{prefix}.{n}") for n in files) or str(meta_path)
        raise ModelFileError(f"{where}: unusable {kind} tokenizer: {e}") from None


def _short(value: object) -> str:
    """repr of a value from a file, cut to 80 characters for one-line messages."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def build_vocab(tok: Tokenizer, texts: list[str], max_size: int | None = None,
                min_freq: int = 1) -> Vocab:
    """The vocabulary of ``tok``'s pieces over ``texts`` (usually the training side). For
    SentencePiece and Hugging Face tokenizers ``max_size`` and ``min_freq`` are ignored: their
    own vocabulary already sized the pieces, and dropping some would only turn them into UNK. Pieces that never occur in
    ``texts`` are left out, as their embeddings would never be trained."""
    if isinstance(tok, SentencePieceTokenizer | HFTokenizer):
        max_size, min_freq = None, 1
    return Vocab.build((tok.encode(t) for t in texts), max_size=max_size, min_freq=min_freq)
