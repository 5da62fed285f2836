"""Vocabulary: a fixed mapping between token strings and integer ids. The four special tokens
always take ids 0-3, so every model, vocabulary file and batch agrees on ``PAD=0, UNK=1,
BOS=2, EOS=3`` without asking the vocabulary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from attendo.files import ModelFileError, check_inside, read_regular_file
from attendo.utils import atomic_write_text

MAX_VOCAB_BYTES = 256 << 20  # a vocabulary file larger than this is not one attendo wrote


class Vocab:
    """Token <-> id mapping: ``tokens`` is the id-to-string list, starting with
    :attr:`SPECIALS`, no duplicates; ``counts`` optional training-data frequencies of the
    tokens (for rare-word diagnostics)."""

    PAD, UNK, BOS, EOS = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")

    def __init__(self, tokens: list[str], counts: dict[str, int] | None = None) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(self.SPECIALS)]) != self.SPECIALS:
            raise ValueError("vocabulary must start with the special tokens "
                             f"{list(self.SPECIALS)}, got {tokens[: len(self.SPECIALS)]}")
        stoi: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise ValueError(f"vocabulary entry {i} is {tok!r}, expected a string")
            if tok in stoi:
                raise ValueError(f"duplicate token {tok!r} at ids {stoi[tok]} and {i}; "
                                 "expected unique tokens")
            stoi[tok] = i
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = stoi
        self.counts: dict[str, int] | None = dict(counts) if counts is not None else None
        # encode()'s lookup: stoi without PAD/BOS/EOS
        self._encode_ids = {t: i for t, i in stoi.items()
                            if i not in (self.PAD, self.BOS, self.EOS)}

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], max_size: int | None = None,
              min_freq: int = 1) -> Vocab:
        """A vocabulary of tokenized sentences: most frequent first, ties alphabetical (so the
        order of the data does not matter); ``max_size`` counts regular tokens only (the
        specials come on top, and are not counted where the data holds them); tokens seen
        fewer than ``min_freq`` times are left out."""
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        counter: Counter[str] = Counter()
        for toks in token_lists:
            counter.update(toks)
        for special in cls.SPECIALS:
            counter.pop(special, None)
        ranked = [(tok, n) for tok, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
                  if n >= min_freq]
        if max_size is not None:
            ranked = ranked[:max_size]
        return cls(list(cls.SPECIALS) + [tok for tok, _ in ranked], counts=dict(ranked))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: list[str]) -> list[int]:
        """Map tokens to ids; unknown tokens become :attr:`UNK`, and so do literal ``<pad>``,
        ``<s>`` and ``</s>``: text must never inject padding or sentence boundaries."""
        lookup, unk = self._encode_ids, self.UNK
        return [lookup.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int], strip: bool = True) -> list[str]:
        """Map ids (any iterable of ints, a 1-D tensor too) to tokens. With ``strip`` (model
        outputs) decoding stops at the first EOS and PAD/BOS are dropped; without it every id
        is shown (for debugging)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # one conversion instead of a tensor index per element
        out, n = [], len(self.itos)
        for i in ids:
            i = int(i)
            if strip:
                if i == self.EOS:
                    break
                if i in (self.PAD, self.BOS):
                    continue
            if not 0 <= i < n:
                raise ValueError(f"id {i} is outside the vocabulary (size {n})")
            out.append(self.itos[i])
        return out

    def to_json(self) -> list[str]:
        return list(self.itos)

    def save(self, path: str | Path) -> None:
        """Write ``{"tokens": [...], "counts": {...}}`` as JSON, atomically."""
        obj: dict[str, object] = {"tokens": self.itos}
        if self.counts is not None:
            obj["counts"] = self.counts
        atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path, model_dir: str | Path | None = None) -> Vocab:
        """Read a vocabulary written by :meth:`save` (or a bare JSON list of tokens). A missing
        file is a FileNotFoundError; anything else wrong (not a regular file, too big, not
        JSON, wrong structure; with ``model_dir``, a path that resolves outside it) a
        :class:`~attendo.files.ModelFileError` whose message starts with the path."""
        path = Path(path)
        if model_dir is not None:
            check_inside(path, model_dir, "vocabulary file")
        raw = read_regular_file(path, "vocabulary file", MAX_VOCAB_BYTES)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ModelFileError(f"{path}: not a JSON vocabulary file ({e})") from None
        if isinstance(obj, list):
            tokens, counts = obj, None
        elif isinstance(obj, dict) and isinstance(obj.get("tokens"), list):
            tokens, counts = obj["tokens"], obj.get("counts")
        else:
            raise ModelFileError(f'{path}: expected a JSON object {{"tokens": [...]}} or a list')
        if counts is not None and not (isinstance(counts, dict) and all(
                type(n) is int and n >= 0 for n in counts.values())):
            raise ModelFileError(f'{path}: "counts" must map tokens to non-negative integers')
        try:
            return cls(tokens, counts=counts)
        except ValueError as e:
            msg = " ".join(str(e).split())  # one line, and short: it may quote the file
            raise ModelFileError(f"{path}: {msg[:300]}{'...' if len(msg) > 300 else ''}") from None
