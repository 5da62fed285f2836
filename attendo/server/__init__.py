"""``attendo serve``: a translation server (FastAPI + uvicorn) with the live explorer page.

- ``POST /translate`` ``{"text": "..." | ["...", ...], "beam": 5, "n_best": 1,
  "return_attention": false, "alignment": false, "align_method": "argmax"}`` ->
  ``{"translations": [record, ...], "time_ms": ...}``, one record per sentence in the format
  of :func:`attendo.explorer.sentence_record`. With ``"alignment": true`` each record also
  has ``"alignment": [[i, j], ...]``: word links of the best hypothesis read off its attention
  (:func:`attendo.align.translation_links`; ``align_method`` argmax, threshold at 0.5,
  shift, or shift-threshold at 0.5), i a whitespace word of the source and j one of ``text``,
  0-based (empty when the pieces do not map onto the words); with ``return_attention`` too,
  the best hypothesis carries them as ``links`` for the explorer to draw.
- ``GET /health``: status, the model, batching settings, limits and counters.
- ``GET /``: the explorer page, posting to ``/translate``.

Concurrent requests are batched (:class:`MicroBatcher`) into one translator call per group
of equal decoding options: batched beam search costs little more per step for 32 sentences
than for one, so this is where the throughput comes from (``max_batch=1`` turns it off).

Every limit (:class:`ServeLimits`, :class:`GuardedH11Protocol`) and every malformed request
is answered with a 4xx and ``{"error": "..."}``; an unexpected failure is a 500 with the same
shape, and the server goes on serving. Each sentence follows the rule of all input
(:func:`attendo.data.corpus.clean_text`): whitespace-only text translates to ``""``, and a
control character is a 422 naming the sentence (0-based, as in the list sent) and the
character (from 1), e.g. ``sentence 1: control character U+0000 (NUL) at character 4; ...``.
An answer over ``max_response_bytes``, estimated before translating
(:func:`estimate_response_bytes`) and measured after, is a 413.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..align import translation_links
from ..explorer import explorer_page, model_summary, sentence_records
from ..viz import LinkSet
from .batcher import MicroBatcher
from .limits import RequestError, ServeLimits, estimate_response_bytes, parse_request, size_error
from .protocol import server_config

log = logging.getLogger("attendo")


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


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


def translate_records(translator, texts: list[str], beam: int, n_best: int,
                      return_attention: bool, align_method: str | None = None) -> list[dict]:
    """One translator call -> explorer records (with attention when asked; with the best
    hypothesis' word links as ``alignment`` when ``align_method`` is given)."""
    want_attn = return_attention or align_method is not None
    outs = translator.translate(texts, beam=beam, n_best=n_best, return_attention=want_attn)
    links = ([sorted(translation_links(translator, o, s, method=align_method) or ())
              for s, o in zip(texts, outs)] if align_method is not None else [None] * len(outs))
    if not return_attention:  # attention was only needed for the links
        for o in outs:
            for h in o.nbest or [o]:
                h.attention, h.info = None, {}
    selfs = (translator.encoder_self_attention([o.src_tokens for o in outs])
             if return_attention else [None] * len(outs))
    overlays = [[LinkSet("model", set(ln), f"attention {align_method}")] if ln else None
                for ln in links]
    records = sentence_records(translator, texts, outs, selfs, overlays)
    for rec, ln in zip(records, links):
        if ln is not None:
            rec["alignment"] = [list(x) for x in ln]
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
    # how many attention matrices an answer holds, for estimate_response_bytes
    m = translator.cfg.model
    per_hyp = 1 + int(m.coverage)
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
        return {"status": "ok", "model": summary,
                "batching": {"max_batch": batcher.max_batch,
                             "max_wait_ms": batcher.max_wait * 1000},
                "limits": asdict(limits),
                "stats": {"requests": batcher.jobs, "sentences": batcher.sentences,
                          "translator_calls": batcher.calls, "queued_sentences": batcher.queued}}

    @app.post("/translate")
    async def translate(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        n_tokens: list[int] = []  # source pieces per sentence, noted while parsing

        def count_and_note(text: str) -> int:
            n_tokens.append(len(translator.src.pieces(text)))
            return n_tokens[-1]

        try:
            body = await _read_body(request, limits.max_body_bytes, limits.read_timeout_s)
            req = parse_request(body, limits, default_beam, count_and_note)
            texts, beam, n_best, attn = req.texts, req.beam, req.n_best, req.return_attention
            size = estimate_response_bytes(texts, n_tokens, n_best, attn, per_hyp, best_extra,
                                           per_source)
            if size > limits.max_response_bytes:
                raise size_error(size, limits.max_response_bytes, measured=False)
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
            e = size_error(len(answer.body), limits.max_response_bytes, measured=True)
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

    from ..translator import Translator

    if threads > 0:
        torch.set_num_threads(threads)
    translator = Translator.from_dir(model_dir, device=device)
    app = create_app(translator, limits, max_batch, max_wait_ms,
                     name=Path(model_dir).resolve().name)
    log.info("serving %s on http://%s:%d (batches up to %d sentences, %g ms window)",
             model_dir, host, port, max_batch, max_wait_ms)
    uvicorn.Server(server_config(app, host, port, log_level)).run()
