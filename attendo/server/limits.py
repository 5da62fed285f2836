"""What a /translate request may ask for (:class:`ServeLimits`) and the checks of a request
against them, before anything is translated: each violation a :class:`RequestError` (a 4xx
status and a message for the client)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..align import METHODS
from ..data.corpus import TextError, clean_text
from ..errors import UsageError
from ..search import Sampling

REQUEST_KEYS = ("text", "image", "beam", "n_best", "return_attention", "alignment", "align_method",
                "prefix", "constraints", "sampling", "replace_unk")
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "n", "seed")
# the server's floor of sampling.temperature: below it the tempered log-probabilities of a
# float32 model overflow to -inf (sampling from nothing); such a temperature is argmax anyway
MIN_TEMPERATURE = 1e-3
# top_p below this keeps the most probable token only, as any smaller one does (the next one
# has at least 1/V of the mass before it); smaller ones round to 0 in float32
MIN_TOP_P = 1e-6
MAX_SEED = 2**63 - 1


@dataclass
class ServeLimits:
    """What one request may ask for; each violation is a 4xx naming the limit."""

    max_body_bytes: int = 256 * 1024  # request body (413)
    max_sentences: int = 64  # sentences per request (413)
    max_chars: int = 2000  # characters per sentence (413)
    max_tokens: int = 256  # source pieces per sentence (413)
    max_beam: int = 10  # beam size, and sampling.n (422)
    max_constraints: int = 16  # lexical constraints per sentence (413)
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
    # an image model's images (base64 in "image"): bytes of each image file, decoded (413);
    # pixels of each, judged by its header before decoding (413: a decompression bomb). Its
    # request body may be longer than max_body_bytes by one such image's base64
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 16_000_000

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @classmethod
    def from_args(cls, args) -> ServeLimits:
        """The limits of ``attendo serve``'s options, validated (a UsageError naming one)."""
        limits = cls(
            max_body_bytes=args.max_body_kb * 1024, max_sentences=args.max_sentences,
            max_chars=args.max_chars, max_tokens=args.max_tokens, max_beam=args.max_beam,
            max_constraints=args.max_constraints, timeout_s=args.timeout,
            read_timeout_s=args.read_timeout, max_response_bytes=args.max_response_kb * 1024,
            header_timeout_s=args.header_timeout, keep_alive_s=args.keep_alive,
            max_connections=args.max_connections, max_image_bytes=args.max_image_kb * 1024,
            max_image_pixels=args.max_image_pixels)
        try:
            limits.validate()
        except ValueError as e:
            raise UsageError(f"limits: {e}") from None
        return limits


class RequestError(Exception):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message = status, message
        self.close = close  # answer with "Connection: close" (the body was not read to its end)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x) -> str:
    """repr of a value sent, cut to a length fit for an error message."""
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TranslateRequest:
    """A checked /translate request."""

    texts: list  # the sentences; for an image model the decoded images (PIL)
    beam: int
    n_best: int
    return_attention: bool
    align_method: str | None = None  # None: no alignment asked for
    # one per sentence, None for none (the whole list None: no sentence has any)
    prefixes: list[str | None] | None = None
    constraints: list[list[str] | None] | None = None
    sampling: Sampling | None = None  # None: beam search
    replace_unk: bool = False

    @property
    def outputs(self) -> int:
        """Hypotheses per sentence in the answer: the n-best, or the samples."""
        return self.sampling.n if self.sampling is not None else self.n_best


def _target_text(text: str, what: str, limits: ServeLimits) -> str:
    """A prefix or constraint, checked and cleaned as source text is."""
    if len(text) > limits.max_chars:
        raise RequestError(413, f"{what}: {len(text)} characters; at most {limits.max_chars}")
    try:
        return clean_text(text)
    except TextError as e:
        raise RequestError(422, f"{what}: {e}") from None


def parse_prefixes(value, n: int, limits: ServeLimits) -> list[str | None] | None:
    """``"prefix"``: a string (the start of every sentence's output) or a list of one string
    or null per sentence; "" and null are no prefix."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value] * n
    if not isinstance(value, list) or len(value) != n or not all(
            p is None or isinstance(p, str) for p in value):
        raise RequestError(422, '"prefix" must be a string (the start of every output) or a '
                                f"list of one string or null per sentence ({n}), got "
                                f"{_short(value)}")
    out = [None if p is None else _target_text(p, f'"prefix" of sentence {i}', limits) or None
           for i, p in enumerate(value)]
    return out if any(out) else None


def parse_constraints(value, n: int, limits: ServeLimits) -> list[list[str] | None] | None:
    """``"constraints"``: a list of words or phrases (every sentence's output must contain
    each) or a list of one such list or null per sentence."""
    if value is None:
        return None
    shape = ('"constraints" must be a list of words or phrases (for every sentence) or a list '
             f"of one such list or null per sentence ({n})")
    if not isinstance(value, list):
        raise RequestError(422, f"{shape}, got {_short(value)}")
    if all(isinstance(c, str) for c in value):
        value = [value] * n
    elif len(value) != n or not all(c is None or isinstance(c, list) for c in value):
        raise RequestError(422, f"{shape}, got {_short(value)}")
    out: list[list[str] | None] = []
    for i, cs in enumerate(value):
        what = f'"constraints" of sentence {i}'
        if cs is None:
            out.append(None)
            continue
        if not all(isinstance(c, str) for c in cs):
            raise RequestError(422, f"{what} must be a list of strings, got {_short(cs)}")
        if len(cs) > limits.max_constraints:
            raise RequestError(413, f"{what}: {len(cs)} constraints; at most "
                                    f"{limits.max_constraints}")
        cleaned = []
        for j, c in enumerate(cs):
            c = _target_text(c, f"{what}, constraint {j}", limits)
            if not c:
                raise RequestError(422, f"{what}, constraint {j}: empty; give a word or phrase")
            cleaned.append(c)
        out.append(cleaned or None)
    return out if any(out) else None


def _number(value, what: str, rule: str) -> float:
    """A JSON number (int or float, not a bool) as a finite float, else a 422."""
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        x = float(value)
    except (TypeError, OverflowError):
        x = math.nan
    if not math.isfinite(x):
        raise RequestError(422, f'"{what}" must be {rule}, got {_short(value)}')
    return x


def parse_sampling(value, limits: ServeLimits) -> Sampling | None:
    """``"sampling"``: null (beam search) or {"temperature", "top_k", "top_p", "n", "seed"},
    each optional (defaults of :class:`attendo.search.Sampling`)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError(422, '"sampling" must be null or an object like {"temperature": 1.0, '
                                '"top_k": 0, "top_p": 1.0, "n": 1, "seed": 0}, got '
                                f"{_short(value)}")
    unknown = sorted(set(value) - set(SAMPLING_KEYS))
    if unknown:
        raise RequestError(422, f'unknown key "sampling.{unknown[0]}"; allowed: '
                                f"{', '.join(SAMPLING_KEYS)}")
    d = Sampling()
    rule = f"a number >= {MIN_TEMPERATURE:g} (lower ones underflow; beam 1 is the argmax)"
    temperature = _number(value.get("temperature", d.temperature), "sampling.temperature", rule)
    if temperature < MIN_TEMPERATURE:
        raise RequestError(422, f'"sampling.temperature" must be {rule}, got {temperature!r}')
    top_p = _number(value.get("top_p", d.top_p), "sampling.top_p", "a number in (0, 1]")
    if not 0 < top_p <= 1:
        raise RequestError(422, f'"sampling.top_p" must be a number in (0, 1], got {top_p!r}')
    top_k, n, seed = (value.get(k, getattr(d, k)) for k in ("top_k", "n", "seed"))
    if not _is_int(top_k) or top_k < 0:
        raise RequestError(422, '"sampling.top_k" must be an integer >= 0 (0: all tokens), '
                                f"got {_short(top_k)}")
    if not _is_int(n) or not 1 <= n <= limits.max_beam:
        raise RequestError(422, f'"sampling.n" must be an integer from 1 to {limits.max_beam} '
                                f"(max_beam), got {_short(n)}")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise RequestError(422, '"sampling.seed" must be an integer from 0 to 2**63 - 1, got '
                                f"{_short(seed)}")
    try:
        return Sampling(temperature, top_k, max(top_p, MIN_TOP_P), n, seed)
    except ValueError as e:  # checked above; kept in case Sampling checks more
        raise RequestError(422, f'"sampling": {e}') from None


IMAGE_INPUT = 'base64 of an image file (PNG, JPEG, ...) or a list of them'


def _inputs(req: dict, limits: ServeLimits, image: bool) -> list[str]:
    """The request's strings of its model's kind of input: "text" (sentences, checked and
    cleaned) or, for an image model, "image" (base64 strings, decoded later)."""
    key, other = ("image", "text") if image else ("text", "image")
    if other in req:
        wrong = (f'this model reads images: send "image" ({IMAGE_INPUT}), not "text"' if image
                 else 'this model reads text: send "text"; "image" is for image models')
        raise RequestError(422, wrong)
    if key not in req:
        raise RequestError(422, f'"image" is required: {IMAGE_INPUT}' if image else
                                '"text" is required: a string or a list of strings')
    values = [req[key]] if isinstance(req[key], str) else req[key]
    if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
        raise RequestError(422, f'"{key}" must be a string or a list of strings'
                                + (f" ({IMAGE_INPUT})" if image else ""))
    if not values:
        raise RequestError(422, f'"{key}" is an empty list; give at least one '
                                + ("image" if image else "sentence"))
    if len(values) > limits.max_sentences:
        raise RequestError(413, f"{len(values)} {'images' if image else 'sentences'}; at most "
                                f"{limits.max_sentences} per request")
    if image:
        for words in ("alignment", "align_method", "replace_unk"):
            if req.get(words, False) is not False:
                raise RequestError(422, f'"{words}" reads the words of the source, and an '
                                        "image has none")
        return values
    cleaned = []  # by the rule of every input: BOM and surrounding whitespace dropped
    for i, t in enumerate(values):
        if len(t) > limits.max_chars:
            raise RequestError(413, f"sentence {i}: {len(t)} characters; at most "
                                    f"{limits.max_chars}")
        try:
            cleaned.append(clean_text(t))
        except TextError as e:  # a control character or a lone surrogate, and where
            raise RequestError(422, f"sentence {i}: {e}") from None
    return cleaned


def parse_request(body: bytes, limits: ServeLimits, default_beam: int,
                  count_tokens: Callable[[str], int],
                  check: Callable[[TranslateRequest], None] | None = None,
                  images: Callable[[list[str]], list] | None = None) -> TranslateRequest:
    """Check a /translate body; RequestError (4xx) if it is not a valid request. ``check``
    (optional) looks at the parsed request last, with the model at hand (the target
    vocabulary of constraints, say), raising a RequestError. ``images`` (an image model's)
    takes "image" instead of "text": it turns the base64 strings into images, last
    (:func:`attendo.server.images.image_reader`), and no tokens are counted."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        example = '{"image": "iVBORw0KGgo..."}' if images is not None else '{"text": "a sentence"}'
        raise RequestError(422, f"expected a JSON object like {example}")
    unknown = sorted(set(req) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(422, f"unknown key {unknown[0]!r}; allowed: {', '.join(REQUEST_KEYS)}")
    texts = _inputs(req, limits, images is not None)
    beam = req.get("beam", default_beam)
    if not _is_int(beam) or not 1 <= beam <= limits.max_beam:
        raise RequestError(422, f'"beam" must be an integer from 1 to {limits.max_beam}, '
                                f"got {_short(beam)}")
    n_best = req.get("n_best", 1)
    if not _is_int(n_best) or not 1 <= n_best <= beam:
        raise RequestError(422, f'"n_best" must be an integer from 1 to beam ({beam}), '
                                f"got {_short(n_best)}")
    attn, align = req.get("return_attention", False), req.get("alignment", False)
    replace_unk = req.get("replace_unk", False)
    for key, value in (("return_attention", attn), ("alignment", align),
                       ("replace_unk", replace_unk)):
        if not isinstance(value, bool):
            raise RequestError(422, f'"{key}" must be true or false, got {_short(value)}')
    method = req.get("align_method", "argmax")
    if not isinstance(method, str) or method not in METHODS:
        raise RequestError(422, f'"align_method" must be one of '
                                f'{", ".join(repr(m) for m in METHODS)}, got {_short(method)}')
    if "align_method" in req and not align:
        raise RequestError(422, '"align_method" chooses how "alignment" is read off the '
                                'attention: send it with "alignment": true')
    prefixes = parse_prefixes(req.get("prefix"), len(texts), limits)
    constraints = parse_constraints(req.get("constraints"), len(texts), limits)
    sampling = parse_sampling(req.get("sampling"), limits)
    if sampling is not None and constraints is not None:
        raise RequestError(422, '"constraints" need beam search, and "sampling" cannot keep '
                                "them: send one or the other")
    if sampling is not None and "n_best" in req:
        raise RequestError(422, '"n_best" is for beam search; with "sampling" the samples are '
                                'the n-best: send "sampling": {"n": ...} instead')
    if images is not None:  # last: it decodes
        texts = images(texts)
    else:
        for i, t in enumerate(texts):  # last: it tokenizes
            n = count_tokens(t)
            if n > limits.max_tokens:
                raise RequestError(413, f"sentence {i}: {n} tokens; at most "
                                        f"{limits.max_tokens}")
    out = TranslateRequest(texts, beam, n_best, attn, method if align else None,
                           prefixes, constraints, sampling, replace_unk)
    if check is not None:
        check(out)
    return out


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
