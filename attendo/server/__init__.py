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
- ``GET /health``: status, the model's input (``"input": "text"`` or ``"image"``), the model,
  batching settings, limits and counters.
- ``GET /``: the explorer page, posting to ``/translate`` (for an image model: a file upload,
  and each output symbol's attention drawn over the image).

An image model (``model.encoder: image``) takes ``"image"`` instead of ``"text"``: the base64
(standard alphabet, padded, no line breaks) of an image file (PNG, JPEG, BMP, GIF, TIFF or
WebP), or a list of them (at most ``max_sentences``), with the same decoding options except
those that read source words (``alignment``, ``align_method``, ``replace_unk``: 422).
Images are decoded in memory (:mod:`attendo.server.images`): invalid base64, a non-image, a
truncated or an empty one is a 422, one over ``max_image_bytes`` (decoded) or
``max_image_pixels`` (judged by its header, before decoding: a decompression bomb) a 413, each
naming ``"image"`` (``"image" 1`` in a list, 0-based); its body may be longer than
``max_body_bytes`` by one image's base64. ``"text"`` to an image model, or ``"image"`` to a
text model, is a 422 naming what the model reads. Each record is as for text, with
``"source": "image i"`` (its place in the request), ``src_tokens`` empty, attention (with
``return_attention``) of shape (output symbols x regions), and ``"grid": {"rows": R, "cols":
C, "cell": [h, w], "pixels": [H, W]}``: the image was read scaled to H x W pixels; entry k of
an attention row is region (row k % R, column k // R), pixels [row*h, row*h + h) x [column*w,
column*w + w) of it (clipped at the edges), so ``numpy.reshape(row, (C, R)).T`` is the (R, C)
grid to upsample over the picture (scaled by the picture's size / (H, W)).

Decoding options of ``/translate`` besides beam search's (:meth:`Translator.translate`), each
optional and checked like the others (a 4xx naming the field):

- ``"prefix"``: target text each output starts with verbatim (interactive translation): a
  string for every sentence, or a list of one string or null per sentence; at most
  ``max_chars`` characters each.
- ``"constraints"``: words or phrases each output must contain (lexical constraints, beam
  search): a list of strings for every sentence, or a list of one such list or null per
  sentence; at most ``max_constraints`` per sentence of ``max_chars`` characters each, and
  with the prefix at most ``max_tokens`` target pieces per sentence. One whose pieces are
  not all in the target vocabulary is a 422 naming it (the model cannot write it).
- ``"sampling"``: ``{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "n": 1, "seed": 0}``
  (any of them; these are the defaults) draws ``n`` outputs per sentence instead of searching,
  given as its n-best (``hyps``), most probable first: temperature at least 0.001, top_k >= 0
  (0: every token), top_p in (0, 1], n from 1 to ``max_beam``, seed from 0 to 2**63 - 1. The
  same request with the same seed gets the same samples (each sampling request is translated
  on its own, not merged with others). Not with ``"constraints"``, nor with ``"n_best"``
  (``n`` is the number of samples); ``"beam"`` is ignored.
- ``"replace_unk"``: true writes, for each ``<unk>`` of the output, the source word it
  attended to most (Luong et al. 2015); each record and hypothesis then has
  ``"unk_replaced"``, how many were replaced (the record's: its best hypothesis'). A model
  without attention answers 422.

Concurrent requests are batched (:class:`MicroBatcher`) into one translator call per group
of equal decoding options (beam, n_best, attention, alignment, replace_unk, and whether there
are constraints, which change how beam search keeps its beam; prefixes and constraints ride
along per sentence; sampling requests go alone): batched beam search costs little more per
step for 32 sentences than for one, so this is where the throughput comes from
(``max_batch=1`` turns it off). If a merged call fails, each request in it is translated again
alone, so one bad request fails only itself. ``attendo serve --model A B ...`` serves an
ensemble (:meth:`Translator.ensemble`).

Every limit (:class:`ServeLimits`, :class:`GuardedH11Protocol`) and every malformed request
is answered with a 4xx and ``{"error": "..."}``; an unexpected failure is a 500 with the same
shape, and the server goes on serving. Each sentence follows the rule of all input
(:func:`attendo.data.corpus.clean_text`): whitespace-only text translates to ``""``, and a
control character is a 422 naming the sentence (0-based, as in the list sent) and the
character (from 1), e.g. ``sentence 1: control character U+0000 (NUL) at character 4; ...``.
So does each prefix and constraint (``"prefix" of sentence 0: control character ...``).
An answer over ``max_response_bytes``, estimated before translating
(:func:`estimate_response_bytes`) and measured after, is a 413.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, astuple
from typing import NamedTuple

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..align import translation_links
from ..errors import AttendoError
from ..explorer import explorer_page, model_summary, sentence_records
from ..search import Sampling
from ..viz import LinkSet
from .batcher import MicroBatcher
from .images import (
    add_grids,
    base64_size,
    estimate_image_response_bytes,
    image_reader,
    is_image_model,
)
from .limits import (
    RequestError,
    ServeLimits,
    TranslateRequest,
    _short,
    estimate_response_bytes,
    parse_request,
    size_error,
)
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
                      return_attention: bool, align_method: str | None = None, *,
                      prefixes: list[str | None] | None = None,
                      constraints: list[list[str] | None] | None = None,
                      sampling: Sampling | None = None, replace_unk: bool = False) -> list[dict]:
    """One translator call -> explorer records (with attention when asked; with the best
    hypothesis' word links as ``alignment`` when ``align_method`` is given; with
    ``unk_replaced`` counts when ``replace_unk``)."""
    want_attn = return_attention or align_method is not None
    outs = translator.translate(texts, beam=beam, n_best=n_best, return_attention=want_attn,
                                prefixes=prefixes, constraints=constraints, sampling=sampling,
                                replace_unk=replace_unk)
    links = ([sorted(translation_links(translator, o, s, method=align_method) or ())
              for s, o in zip(texts, outs)] if align_method is not None else [None] * len(outs))
    if not return_attention:  # attention was only needed for the links (or replace_unk)
        for o in outs:
            for h in o.nbest or [o]:
                h.attention, h.info = None, {}
    selfs = (translator.encoder_self_attention([o.src_tokens for o in outs])
             if return_attention else [None] * len(outs))
    overlays = [[LinkSet("model", set(ln), f"attention {align_method}")] if ln else None
                for ln in links]
    sources = [t if isinstance(t, str) else "" for t in texts]  # images: named by the server
    records = sentence_records(translator, sources, outs, selfs, overlays)
    add_grids(translator, records, texts)
    for rec, out, ln in zip(records, outs, links):
        if ln is not None:
            rec["alignment"] = [list(x) for x in ln]
        if replace_unk:
            rec["unk_replaced"] = out.unk_replaced
            for hyp, h in zip(rec["hyps"], out.nbest or [out]):
                hyp["unk_replaced"] = h.unk_replaced
    return records


class Sentence(NamedTuple):
    """What the batcher carries per sentence: the text (an image model's: a PIL image, as the
    model reads it) and its own decoding options."""

    text: object
    prefix: str | None = None
    constraints: list[str] | None = None


class Options(NamedTuple):
    """The batching key: decoding options of a whole translator call (requests with equal
    options are merged). ``sampling`` is a :class:`Sampling`'s fields; ``alone`` is unique per
    sampling request, whose samples would depend on what else shares the call."""

    beam: int
    n_best: int
    return_attention: bool
    align_method: str | None = None
    replace_unk: bool = False
    # with constraints, a call's beam search keeps its beam by dynamic allocation (and beam 1
    # is a beam search, not greedy): such requests are not merged with those without
    constrained: bool = False
    sampling: tuple | None = None
    alone: int = 0


def translate_sentences(translator, sentences: list, *key) -> list[dict]:
    """The batcher's call: :func:`translate_records` of :class:`Sentence` items (or plain
    texts) under :class:`Options` ``key``."""
    opts = Options(*key)
    items = [s if isinstance(s, Sentence) else Sentence(s) for s in sentences]
    prefixes = [s.prefix for s in items]
    constraints = [s.constraints for s in items]
    return translate_records(
        translator, [s.text for s in items], opts.beam, opts.n_best, opts.return_attention,
        opts.align_method, prefixes=prefixes if any(prefixes) else None,
        constraints=constraints if any(constraints) else None,
        sampling=None if opts.sampling is None else Sampling(*opts.sampling),
        replace_unk=opts.replace_unk)


def target_check(translator, limits: ServeLimits) -> Callable[[TranslateRequest], None]:
    """The checks of a parsed request that need the model (see :func:`parse_request`): a 422
    for replace_unk without attention and for a constraint the target vocabulary cannot
    spell; a 413 for more than ``max_tokens`` target pieces of prefix and constraints."""
    tgt = translator.tgt

    def check(req: TranslateRequest) -> None:
        if req.replace_unk and not translator.model.has_attention:
            raise RequestError(422, '"replace_unk" writes the source word each <unk> attended '
                                    "to, and this model has no attention")
        n = len(req.texts)
        prefixes, constraints = req.prefixes or [None] * n, req.constraints or [None] * n
        for i, (prefix, cs) in enumerate(zip(prefixes, constraints)):
            total = len(tgt.pieces(prefix)) if prefix else 0
            for j, c in enumerate(cs or []):
                what = f'"constraints" of sentence {i}, constraint {j} ({_short(c)})'
                pieces = tgt.pieces(c)
                if not pieces:
                    raise RequestError(422, f"{what}: no target tokens")
                unknown = [p for p in pieces if p not in tgt.vocab.stoi]
                if unknown:
                    raise RequestError(422, f"{what}: pieces outside the target vocabulary "
                                            f"({', '.join(map(repr, unknown[:5]))}); the model "
                                            "cannot write it")
                total += len(pieces)
            if total > limits.max_tokens:
                raise RequestError(413, f'"prefix" and "constraints" of sentence {i}: {total} '
                                        f"target tokens; at most {limits.max_tokens}")

    return check


_alone = itertools.count(1)


def batch_key(req: TranslateRequest) -> Options:
    """The :class:`Options` a request is batched under."""
    return Options(req.beam, req.n_best, req.return_attention, req.align_method,
                   req.replace_unk, req.constraints is not None,
                   None if req.sampling is None else astuple(req.sampling),
                   next(_alone) if req.sampling is not None else 0)


def create_app(translator, limits: ServeLimits | None = None, max_batch: int = 32,
               max_wait_ms: float = 5.0, name: str = "") -> FastAPI:
    """The FastAPI app around a loaded Translator. ``app.state.batcher`` holds the
    :class:`MicroBatcher` (its ``calls`` counter shows how requests were merged)."""
    limits = limits or ServeLimits()
    limits.validate()
    images = image_reader(translator.src, limits) if is_image_model(translator) else None
    # an image model's body may hold one image of max_image_bytes besides the rest
    max_body = limits.max_body_bytes + (0 if images is None else
                                        base64_size(limits.max_image_bytes))
    batcher = MicroBatcher(lambda *a: translate_sentences(translator, *a), max_batch,
                           max_wait_ms)
    check = target_check(translator, limits)
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
    app.state.batcher, app.state.limits, app.state.translator = batcher, limits, translator

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
        return {"status": "ok", "input": summary["input"], "model": summary,
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
            body = await _read_body(request, max_body, limits.read_timeout_s)
            if images is None:
                req = parse_request(body, limits, default_beam, count_and_note, check)
                size = estimate_response_bytes(req.texts, n_tokens, req.outputs,
                                               req.return_attention, per_hyp, best_extra,
                                               per_source)
            else:  # decoding images takes a while: not on the event loop
                req = await asyncio.to_thread(parse_request, body, limits, default_beam,
                                              count_and_note, check, images)
                size = estimate_image_response_bytes(req.texts, translator, req.outputs,
                                                     req.return_attention, per_hyp, best_extra)
            texts = req.texts
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
        n = len(texts)
        sentences = [Sentence(t, p, c) for t, p, c in
                     zip(texts, req.prefixes or [None] * n, req.constraints or [None] * n)]
        future = batcher.submit(sentences, batch_key(req))
        try:
            records = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
        except TimeoutError:
            return _error(408, f"the translation took longer than the {limits.timeout_s:g} s "
                               "limit per request; send fewer or shorter sentences")
        except AttendoError as e:  # a user error the checks above missed: the request's own
            return _error(422, str(e))
        if images is not None:
            records = [{**rec, "source": f"image {i}"} for i, rec in enumerate(records)]
        answer = JSONResponse({"translations": records,
                               "time_ms": round((time.perf_counter() - t0) * 1000, 2)})
        if len(answer.body) > limits.max_response_bytes:  # longer outputs than estimated
            e = size_error(len(answer.body), limits.max_response_bytes, measured=True)
            return _error(e.status, e.message)
        return answer

    return app


def serve(model_dir: str | list[str], host: str = "127.0.0.1", port: int = 8000,
          device: str = "cpu", threads: int = 0, max_batch: int = 32, max_wait_ms: float = 5.0,
          limits: ServeLimits | None = None, log_level: str = "info",
          unk_dict: str | None = None) -> None:
    """Load a model directory (several: an ensemble, :meth:`Translator.ensemble`) and serve it
    until interrupted; ``unk_dict``: the dictionary file of ``"replace_unk"``."""
    from pathlib import Path

    import torch
    import uvicorn

    from ..translator import Translator

    if threads > 0:
        torch.set_num_threads(threads)
    dirs = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
    translator = Translator.ensemble(dirs, device=device)
    if unk_dict:
        from ..unk import load_dictionary

        translator.unk_dict = load_dictionary(unk_dict)
    name = "+".join(Path(d).resolve().name for d in dirs)
    app = create_app(translator, limits, max_batch, max_wait_ms, name=name)
    log.info("serving %s on http://%s:%d (batches up to %d sentences, %g ms window)",
             " ".join(map(str, dirs)), host, port, max_batch, max_wait_ms)
    uvicorn.Server(server_config(app, host, port, log_level)).run()
