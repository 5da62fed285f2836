"""``attendo serve``: a translation server (FastAPI + uvicorn) with the live explorer page.

- ``POST /translate`` ``{"text": "..." | ["...", ...], "beam": 5, "n_best": 1,
  "return_attention": false, "alignment": false, "align_method": "argmax"}`` ->
  ``{"translations": [record, ...], "time_ms": ...}``, one record per sentence in the format
  of :func:`attendo.explorer.sentence_record`. With ``"alignment": true`` each record also
  has ``"alignment": [[i, j], ...]``: word links of the best hypothesis read off its attention
  (:func:`attendo.align.translation_links`; ``align_method`` argmax, threshold at 0.5,
  shift, or shift-threshold at 0.5), i a whitespace word of the source and j one of ``text``,
  0-based (empty when the pieces do not map onto the words); with ``return_attention`` too, the best hypothesis
  carries them as ``links`` for the explorer to draw.
- ``GET /health``: status, the model, batching settings, limits and counters.
- ``GET /``: the explorer page, posting to ``/translate``.

Concurrent requests are batched (:class:`MicroBatcher`): the first waiting request opens a
window of ``max_wait_ms``; requests arriving in it join until ``max_batch`` sentences, and
each group with the same decoding options becomes one translator call in a worker thread.
Batched beam search costs little more per step for 32 sentences than for one, so this is
where the throughput comes from. ``max_batch=1`` turns batching off (one request per call).

Every limit (:class:`ServeLimits`) and every malformed request is answered with a 4xx and
``{"error": "..."}``; an unexpected failure is a 500 with the same shape, and the server
goes on serving. Each sentence follows the rule of all input
(:func:`attendo.data.corpus.clean_text`): a byte-order mark and surrounding whitespace are
dropped (whitespace-only text translates to ``""``), and a control character is a 422 naming
the sentence (0-based, as in the list sent) and the character (from 1), e.g.
``sentence 1: control character U+0000 (NUL) at character 4; ...``.

These limits guard the server itself rather than the model:

- ``read_timeout_s``: the whole request body must arrive within it, or the answer is a 408
  and the connection is closed (a client sending part of a body cannot hold the server); a
  body that a route taking none left unread, answered already, is cut off as long after its
  next byte.
- ``header_timeout_s``: a request's line and headers must arrive within it (from the
  connection opening, for the first request), or the connection is closed, with a 408 if a
  request had begun; ``keep_alive_s`` closes an idle connection between requests; with
  ``max_connections`` open, one more is answered 503 and closed. Of these uvicorn itself
  has only the keep-alive time; :class:`GuardedH11Protocol` adds the rest.
- ``max_response_bytes``: the size of an answer. It is estimated before translating from
  the sources (as if each output were as long as its source; it grows with sentences x
  n_best x attention) and measured after; either over the limit is a 413.

A client that disconnects mid-request is logged at debug level only (no traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

import h11
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from .align import METHODS, tokenizer_kinds, translation_links
from .data.corpus import TextError, clean_text
from .explorer import explorer_page, model_summary, sentence_record
from .viz import LinkSet

log = logging.getLogger("attendo")

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


# --------------------------------------------------------------------------- batching


@dataclass
class _Job:
    texts: list[str]
    key: tuple  # decoding options; only jobs with equal keys share a translator call
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Merge concurrent requests into few calls of ``run(texts, *key) -> list`` (one result
    per text), made one at a time by a worker thread.

    The first job waits at most ``max_wait_ms`` for others; a window closes early once it
    holds ``max_batch`` sentences (a job that would overflow it starts the next window; a
    single larger job goes alone). Jobs of a window are grouped by key, one call per group.
    A job whose future was cancelled before its call (the client gave up) is skipped.
    """

    def __init__(self, run: Callable[..., list], max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self.calls = self.jobs = self.sentences = 0  # counters, for /health and tests
        self.queued = 0  # sentences submitted and not yet answered
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name="attendo-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str], key: tuple = ()) -> Future:
        job = _Job(list(texts), key)
        with self._lock:
            self.queued += len(job.texts)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _next_window(self) -> tuple[list[_Job], bool]:
        """Block for a first job, then gather more for max_wait; (jobs, stop requested)."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if n + len(job.texts) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _loop(self) -> None:
        while True:
            jobs, stop = self._next_window()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run_group(key, group)
            if stop:
                return

    def _run_group(self, key: tuple, group: list[_Job]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        texts = [t for j in live for t in j.texts]
        try:
            if live:
                results = self.run(texts, *key)
                if len(results) != len(texts):
                    raise RuntimeError(f"translator gave {len(results)} results for {len(texts)}")
                with self._lock:
                    self.calls += 1
                    self.jobs += len(live)
                    self.sentences += len(texts)
                k = 0
                for j in live:
                    j.future.set_result(results[k : k + len(j.texts)])
                    k += len(j.texts)
        except Exception as e:  # the caller answers 500; the worker goes on
            log.exception("translation failed")
            for j in live:
                if not j.future.done():
                    j.future.set_exception(e)
        finally:
            with self._lock:
                self.queued -= sum(len(j.texts) for j in group)


# --------------------------------------------------------------------------- requests


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
    text = req["text"]
    texts = [text] if isinstance(text, str) else text
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
    attn = req.get("return_attention", False)
    if not isinstance(attn, bool):
        raise RequestError(422, f'"return_attention" must be true or false, got {attn!r}')
    align = req.get("alignment", False)
    if not isinstance(align, bool):
        raise RequestError(422, f'"alignment" must be true or false, got {align!r}')
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


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, at most ``limit`` bytes, all of it within ``timeout_s`` seconds (a
    slow or stalled body is a 408). A client that goes away raises ClientDisconnect."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes; at most {limit}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):  # one deadline for the whole body, not per chunk
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within the {timeout_s:g} s "
                                f"limit (read_timeout_s); got {size} bytes",
                           close=True) from None
    return b"".join(chunks)


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


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


def _size_error(size: int, limit: int, measured: bool) -> RequestError:
    what = "is" if measured else "would be about"
    return RequestError(413, f"the answer {what} {size} bytes; the limit is "
                             f"max_response_bytes = {limit} (--max-response-kb); send fewer "
                             "sentences, a smaller n_best or no return_attention")


# --------------------------------------------------------------------------- connections


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with the guards uvicorn lacks.

    uvicorn times out only an idle kept-alive connection (``timeout_keep_alive``, armed after a
    response, and disarmed by any byte that arrives); a connection that never completes its
    request line and headers is held for ever (slow loris), and so is one that, answered
    already, goes on sending a body nobody reads a byte at a time. ``limit_concurrency``
    answers 503 only once a request's headers have arrived, so it bounds neither. Here:

    - a request's line and headers must arrive within ``header_timeout_s`` of its first byte
      (of the connection being opened, for the first request); after that the connection is
      closed, with a 408 when part of a request had arrived;
    - the rest of a body that was answered without being read (a route that takes none) must
      arrive within ``read_timeout_s`` of its next byte, or the connection is closed (a body
      the app reads has that deadline in the app: a 408);
    - with ``max_connections`` open, one more is answered 503 at once and closed.

    Made per server by :func:`server_config`, which sets the class attributes from
    :class:`ServeLimits`.
    """

    header_timeout_s: float = ServeLimits.header_timeout_s
    read_timeout_s: float = ServeLimits.read_timeout_s
    max_connections: int = ServeLimits.max_connections

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._on_deadline: Callable[[], None] | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("%d connections open (max_connections); refused one from %s",
                        len(self.connections) - 1, self.client)
            self._refuse(503, "Service Unavailable",
                         f"busy: {self.max_connections} connections are open, the limit "
                         "(max_connections, --max-connections); try again shortly")
            return
        self._arm(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.IDLE:  # part of a request: its deadline runs from here on
            self._arm(self.header_timeout_s, self._headers_too_slow)
        elif state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete:
            self._arm(self.read_timeout_s, self._unread_body_too_slow)
        else:  # headers in, and the app reads the body (or the request is over)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        """One deadline per stage of a request, not one per chunk: armed once, kept."""
        if self._on_deadline == callback:
            return
        self._disarm()
        self._deadline, self._on_deadline = self.loop.call_later(seconds, callback), callback

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._on_deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = self._on_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.debug("closed a connection from %s: no complete request headers within %g s",
                  self.client, self.header_timeout_s)
        if self.conn.trailing_data[0]:  # a request had begun: say why it is cut off
            self._refuse(408, "Request Timeout",
                         f"the request line and headers did not arrive within the "
                         f"{self.header_timeout_s:g} s limit (header_timeout_s, "
                         "--header-timeout)")
        else:
            self.transport.close()

    def _unread_body_too_slow(self) -> None:
        self._deadline = self._on_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            log.debug("closed a connection from %s: the rest of an answered request's body "
                      "did not arrive within %g s", self.client, self.read_timeout_s)
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``{"error": message}`` and close, outside h11's request cycle (no request
        was read)."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info"):
    """The uvicorn configuration of ``attendo serve`` for an app of :func:`create_app`: the
    h11 protocol with the deadlines and connection cap of the app's limits
    (:class:`GuardedH11Protocol`), and their keep-alive time."""
    import uvicorn

    limits: ServeLimits = app.state.limits
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": limits.header_timeout_s, "read_timeout_s": limits.read_timeout_s,
        "max_connections": limits.max_connections})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          ws="none", timeout_keep_alive=limits.keep_alive_s)


# --------------------------------------------------------------------------- the app


def translate_records(translator, texts: list[str], beam: int, n_best: int,
                      return_attention: bool, align_method: str | None = None) -> list[dict]:
    """One translator call -> explorer records (with attention when asked; with the best
    hypothesis' word links as ``alignment`` when ``align_method`` is given)."""
    want_attn = return_attention or align_method is not None
    outs = translator.translate(texts, beam=beam, n_best=n_best, return_attention=want_attn)
    links: list = [None] * len(outs)
    if align_method is not None:
        links = [sorted(translation_links(translator, o, s, method=align_method) or ())
                 for s, o in zip(texts, outs)]
    if not return_attention:  # attention was only needed for the links
        for o in outs:
            for h in o.nbest or [o]:
                h.attention, h.info = None, {}
    selfs = (translator.encoder_self_attention([o.src_tokens for o in outs])
             if return_attention else [None] * len(outs))
    kinds = tokenizer_kinds(translator)
    records = []
    for s, o, a, ln in zip(texts, outs, selfs, links):
        overlay = [LinkSet("model", set(ln), f"attention {align_method}")] if ln else None
        rec = sentence_record(s, o, a, alignment=overlay, kinds=kinds)
        if ln is not None:
            rec["alignment"] = [list(x) for x in ln]
        records.append(rec)
    return records


def create_app(translator, limits: ServeLimits | None = None, max_batch: int = 32,
               max_wait_ms: float = 5.0, name: str = "") -> FastAPI:
    """The FastAPI app around a loaded Translator. ``app.state.batcher`` holds the
    :class:`MicroBatcher` (its ``calls`` counter shows how requests were merged)."""
    limits = limits or ServeLimits()
    limits.validate()
    batcher = MicroBatcher(lambda *a: translate_records(translator, *a), max_batch, max_wait_ms)
    summary = model_summary(translator, name)
    default_beam = min(translator.cfg.decode.beam_size, limits.max_beam)
    page = explorer_page({"model": summary, "sentences": []}, live=True,
                         title=f"attendo explorer: {name}" if name else "attendo explorer")

    def count_tokens(text: str) -> int:
        return len(translator.src.pieces(text))

    # how many attention matrices an answer holds, for estimate_response_bytes
    m = translator.cfg.model
    per_hyp = 1 + int(bool(getattr(m, "coverage", False)))
    best_extra = m.dec_layers * m.heads if m.decoder == "transformer" else 0
    per_source = m.enc_layers * m.heads if m.encoder == "transformer" else 0

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="attendo", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.batcher, app.state.limits = batcher, limits

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):
        # the client went away mid-request: nobody reads this answer; not a server error
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return _error(499, "client disconnected")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": summary,
            "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000},
            "limits": asdict(limits),
            "stats": {"requests": batcher.jobs, "sentences": batcher.sentences,
                      "translator_calls": batcher.calls, "queued_sentences": batcher.queued},
        }

    @app.post("/translate")
    async def translate(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        n_tokens: list[int] = []  # source pieces per sentence, noted while parsing

        def count_and_note(text: str) -> int:
            n_tokens.append(count_tokens(text))
            return n_tokens[-1]

        try:
            body = await _read_body(request, limits.max_body_bytes, limits.read_timeout_s)
            req = parse_request(body, limits, default_beam, count_and_note)
            texts, beam, n_best, attn = req.texts, req.beam, req.n_best, req.return_attention
            size = estimate_response_bytes(texts, n_tokens, n_best, attn, per_hyp, best_extra,
                                           per_source)
            if size > limits.max_response_bytes:
                raise _size_error(size, limits.max_response_bytes, measured=False)
            if batcher.queued + len(texts) > limits.max_queue:
                raise RequestError(429, f"busy: {batcher.queued} sentences are waiting; "
                                        "try again shortly")
        except RequestError as e:
            return _error(e.status, e.message, e.close)
        except ClientDisconnect:  # gone before its body arrived: nothing to answer
            log.debug("client disconnected while sending /translate")
            return _error(499, "client disconnected")
        future = batcher.submit(texts, (beam, n_best, attn, req.align_method))
        try:
            records = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
        except TimeoutError:
            return _error(408, f"the translation took longer than the {limits.timeout_s:g} s "
                               "limit per request; send fewer or shorter sentences")
        answer = JSONResponse({"translations": records,
                               "time_ms": round((time.perf_counter() - t0) * 1000, 2)})
        if len(answer.body) > limits.max_response_bytes:  # longer outputs than estimated
            e = _size_error(len(answer.body), limits.max_response_bytes, measured=True)
            return _error(e.status, e.message)
        return answer

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          threads: int = 0, max_batch: int = 32, max_wait_ms: float = 5.0,
          limits: ServeLimits | None = None, log_level: str = "info") -> None:
    """Load a model directory and serve it until interrupted."""
    from pathlib import Path

    import torch
    import uvicorn

    from .translator import Translator

    if threads > 0:
        torch.set_num_threads(threads)
    translator = Translator.from_dir(model_dir, device=device)
    app = create_app(translator, limits, max_batch, max_wait_ms,
                     name=Path(model_dir).resolve().name)
    log.info("serving %s on http://%s:%d (batches up to %d sentences, %g ms window)",
             model_dir, host, port, max_batch, max_wait_ms)
    uvicorn.Server(server_config(app, host, port, log_level)).run()
