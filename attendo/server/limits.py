"""What a /translate request may ask for (:class:`ServeLimits`) and the checks of a request
against them, before anything is translated: each violation a :class:`RequestError` (a 4xx
status and a message for the client)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..align import METHODS
from ..data.corpus import TextError, clean_text

REQUEST_KEYS = ("text", "beam", "n_best", "return_attention", "alignment", "align_method")


@dataclass
class ServeLimits:
    """What one request may ask for; each violation is a 4xx naming the limit."""

    max_body_bytes: int = 256 * 1024  # request body (413)
    max_sentences: int = 64  # sentences per request (413)
    max_chars: int = 2000  # characters per sentence (413)
    max_tokens: int = 256  # source pieces per sentence (413)
    max_beam: int = 10  # beam size (422)
    timeout_s: float = 60.0  # queueing + translation of one request (408)
    max_queue: int = 1024  # sentences waiting for the worker; more -> 429 (busy)
    read_timeout_s: float = 10.0  # the whole request body must arrive within it (408, closed)
    max_response_bytes: int = 4096 * 1024  # size of an answer, estimated and measured (413)
    # connections (GuardedH11Protocol): each request's line and headers must arrive within
    # header_timeout_s of its first byte (of the connection, for the first request); an idle
    # kept-alive connection is closed after keep_alive_s; over max_connections open at once
    # a new connection is answered 503 and closed
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 512

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


class RequestError(Exception):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message = status, message
        self.close = close  # answer with "Connection: close" (the body was not read to its end)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class TranslateRequest:
    """A checked /translate request."""

    texts: list[str]
    beam: int
    n_best: int
    return_attention: bool
    align_method: str | None = None  # None: no alignment asked for


def parse_request(body: bytes, limits: ServeLimits, default_beam: int,
                  count_tokens: Callable[[str], int]) -> TranslateRequest:
    """Check a /translate body; RequestError (4xx) if it is not a valid request."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise RequestError(422, 'expected a JSON object like {"text": "a sentence"}')
    unknown = sorted(set(req) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(422, f"unknown key {unknown[0]!r}; allowed: {', '.join(REQUEST_KEYS)}")
    if "text" not in req:
        raise RequestError(422, '"text" is required: a string or a list of strings')
    texts = [req["text"]] if isinstance(req["text"], str) else req["text"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(422, '"text" must be a string or a list of strings')
    if not texts:
        raise RequestError(422, '"text" is an empty list; give at least one sentence')
    if len(texts) > limits.max_sentences:
        raise RequestError(413, f"{len(texts)} sentences; at most {limits.max_sentences} "
                                "per request")
    cleaned = []  # by the rule of every input: BOM and surrounding whitespace dropped
    for i, t in enumerate(texts):
        if len(t) > limits.max_chars:
            raise RequestError(413, f"sentence {i}: {len(t)} characters; at most "
                                    f"{limits.max_chars}")
        try:
            cleaned.append(clean_text(t))
        except TextError as e:  # a control character or a lone surrogate, and where
            raise RequestError(422, f"sentence {i}: {e}") from None
    texts = cleaned
    beam = req.get("beam", default_beam)
    if not _is_int(beam) or not 1 <= beam <= limits.max_beam:
        raise RequestError(422, f'"beam" must be an integer from 1 to {limits.max_beam}, '
                                f"got {beam!r}")
    n_best = req.get("n_best", 1)
    if not _is_int(n_best) or not 1 <= n_best <= beam:
        raise RequestError(422, f'"n_best" must be an integer from 1 to beam ({beam}), '
                                f"got {n_best!r}")
    attn, align = req.get("return_attention", False), req.get("alignment", False)
    for key, value in (("return_attention", attn), ("alignment", align)):
        if not isinstance(value, bool):
            raise RequestError(422, f'"{key}" must be true or false, got {value!r}')
    method = req.get("align_method", "argmax")
    if not isinstance(method, str) or method not in METHODS:
        raise RequestError(422, f'"align_method" must be one of '
                                f'{", ".join(repr(m) for m in METHODS)}, got {method!r}')
    if "align_method" in req and not align:
        raise RequestError(422, '"align_method" chooses how "alignment" is read off the '
                                'attention: send it with "alignment": true')
    for i, t in enumerate(texts):  # last: it tokenizes
        n = count_tokens(t)
        if n > limits.max_tokens:
            raise RequestError(413, f"sentence {i}: {n} tokens; at most {limits.max_tokens}")
    return TranslateRequest(texts, beam, n_best, attn, method if align else None)


def estimate_response_bytes(texts: list[str], n_tokens: list[int], n_best: int,
                            attention: bool, per_hyp: int = 1, best_extra: int = 0,
                            per_source: int = 0) -> int:
    """An estimate (on the low side) of a /translate answer's size, before translating: as
    if each output were as long as its source (S pieces + "</s>") and every attention weight
    took 4 bytes ("0.0,"). With attention, a hypothesis holds ``per_hyp`` (T x S) matrices (2 with
    coverage), the best one ``best_extra`` more (Transformer heads) and each sentence
    ``per_source`` (S x S) ones (encoder self-attention)."""
    total = 0
    for text, s in zip(texts, n_tokens):
        t = s + 1
        hyp = 2 * len(text.encode("utf-8", "replace")) + 4 * t + 40  # text, tgt_tokens, score
        cells = (n_best * per_hyp + best_extra) * t * s + per_source * s * s if attention else 0
        total += 2 * len(text) + 4 * s + 60 + n_best * hyp + 4 * cells
    return total


def size_error(size: int, limit: int, measured: bool) -> RequestError:
    what = "is" if measured else "would be about"
    return RequestError(413, f"the answer {what} {size} bytes; the limit is "
                             f"max_response_bytes = {limit} (--max-response-kb); send fewer "
                             "sentences, a smaller n_best or no return_attention")
