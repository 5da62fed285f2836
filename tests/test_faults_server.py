"""attendo serve under faults, against a LIVE uvicorn server: a body that never finishes, a
client that goes away mid-request, answers over the size limit, malformed bodies (always a
4xx with a JSON error, never a 5xx), and a hypothesis fuzz of the request parser."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import select
import socket
import time

import pytest
from conftest import serve_in_thread, train_tiny

pytest.importorskip("fastapi", reason="attendo serve needs fastapi: pip install 'attendo[serve]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import attendo  # noqa: E402
from attendo import server  # noqa: E402
from attendo.data.corpus import clean_text  # noqa: E402
from attendo.server import (  # noqa: E402
    RequestError,
    ServeLimits,
    create_app,
    estimate_response_bytes,
    parse_request,
)
from attendo.server.limits import REQUEST_KEYS, TranslateRequest  # noqa: E402

READ_TIMEOUT = 2.0
LIMITS = ServeLimits(max_body_bytes=64 * 1024, max_sentences=4, max_chars=300, max_tokens=20,
                     max_beam=4, timeout_s=20.0, read_timeout_s=READ_TIMEOUT)


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    return attendo.load(train_tiny(tmp_path_factory.mktemp("faults") / "model"))


@pytest.fixture(scope="module")
def live(translator):
    """A real uvicorn server in a thread: (app, port)."""
    app = create_app(translator, LIMITS, max_wait_ms=2.0)
    with serve_in_thread(app) as port:
        yield app, port


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def server_logs():
    """Records of the loggers a failing request would write to (attendo's 500 handler,
    uvicorn's "Exception in ASGI application", asyncio's unretrieved task errors). Attached
    after the server started: uvicorn's logging setup replaces its loggers' handlers."""
    h = _Records()
    names = ("attendo", "uvicorn", "uvicorn.error", "asyncio", "")
    for name in names:
        logging.getLogger(name).addHandler(h)
    try:
        yield h.records
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(h)


def post(port: int, body: bytes, content_type: str = "application/json"
         ) -> tuple[int, dict, dict]:
    """POST /translate -> (status, JSON answer, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/translate", body=body, headers={"Content-Type": content_type})
        r = conn.getresponse()
        data = r.read()
        assert r.getheader("content-type", "").startswith("application/json"), data[:200]
        return r.status, json.loads(data), dict(r.getheaders())
    finally:
        conn.close()


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        r = conn.getresponse()
        return r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        conn.close()


def partial_post(port: int, declared: int, sent: bytes) -> socket.socket:
    """A raw socket that sent the headers of a POST /translate of ``declared`` bytes and
    only ``sent`` of its body, and stays open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (declared, sent))
    return s


def problems(records: list[logging.LogRecord]) -> list[str]:
    """Log lines a quiet disconnect must not produce: warnings and up, any traceback."""
    return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in records
            if r.levelno >= logging.WARNING or r.exc_info or "unexpected error" in r.getMessage()]


# --------------------------------------------------------------------------- 1: read timeout


@pytest.mark.parametrize("how", ["stalled", "dribbling"])
def test_a_slow_partial_body_is_cut_off_at_the_read_timeout(live, how):
    """A body that stops (or arrives a byte at a time, which a per-chunk timeout would let
    through) gets a 408 naming the limit within read_timeout_s, and the connection is
    closed; meanwhile other requests are served at once."""
    _, port = live
    t0 = time.monotonic()
    s = partial_post(port, 1000, b'{"text": "a b')
    try:
        # another client is served while the slow one is pending (not answered yet)
        status, answer, _ = post(port, b'{"text": "a b"}')
        assert status == 200 and answer["translations"]
        assert not select.select([s], [], [], 0)[0], "the slow request was answered first"
        deadline = t0 + READ_TIMEOUT + 5
        while time.monotonic() < deadline:  # until the server answers (or closes)
            if how == "dribbling":
                with contextlib.suppress(OSError):
                    s.send(b" ")
            if select.select([s], [], [], 0.2)[0]:
                break
        else:
            pytest.fail(f"no answer {READ_TIMEOUT + 5:g} s after a partial body ({how})")
        elapsed = time.monotonic() - t0
        assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 3, elapsed
        r = http.client.HTTPResponse(s)
        r.begin()
        assert r.status == 408
        error = json.loads(r.read())["error"]
        assert "read_timeout_s" in error and f"{READ_TIMEOUT:g} s" in error
        assert r.getheader("connection") == "close"
        s.settimeout(5)
        assert s.recv(100) == b""  # closed by the server, not left to linger
    finally:
        s.close()
    assert healthy(port)


# --------------------------------------------------------------------------- 2: disconnects


@pytest.mark.parametrize("how", ["close mid-body", "reset mid-body", "close before answer"])
def test_a_client_disconnect_is_quiet_and_the_server_stays_up(live, how):
    """A client gone mid-request: no "unexpected error", no traceback, no warning in the
    logs, no 500 handler; the server answers the next request."""
    app, port = live
    with server_logs() as records:
        if how == "close before answer":  # a whole body, then gone before the answer
            body = json.dumps({"text": ["a b c"] * 4, "beam": 4, "n_best": 4,
                               "return_attention": True}).encode()
            s = partial_post(port, len(body), body)
        else:
            s = partial_post(port, 1000, b'{"text": ["a b", "c d')
        if how == "reset mid-body":  # an abortive close: RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(0.1)  # the server has the request and is reading the body / translating
        s.close()
        time.sleep(0.5)  # let it notice the disconnect
        assert healthy(port)
        status, _, _ = post(port, b'{"text": "a b"}')
        assert status == 200
        time.sleep(0.1)
    assert problems(records) == []


# --------------------------------------------------------------------------- 3: answer size


def test_an_answer_over_the_size_limit_is_a_413_before_translating(translator):
    """sentences x n_best x attention over max_response_bytes: refused from the estimate,
    before any translation; the error names the limit and its value."""
    limits = ServeLimits(**{**LIMITS.__dict__, "max_response_bytes": 2000})
    app = create_app(translator, limits, max_wait_ms=2.0)
    with serve_in_thread(app) as port:
        big = json.dumps({"text": ["a b c d e"] * 4, "beam": 4, "n_best": 4,
                          "return_attention": True}).encode()
        status, answer, _ = post(port, big)
        assert status == 413
        assert "max_response_bytes = 2000" in answer["error"], answer
        assert "would be about" in answer["error"]  # estimated
        assert app.state.batcher.calls == 0  # refused before translating
        # the same sentences without attention and n-best fit
        small = json.dumps({"text": ["a b c d e"] * 4, "beam": 4}).encode()
        status, answer, _ = post(port, small)
        assert status == 200 and len(answer["translations"]) == 4
        assert len(json.dumps(answer)) <= 2000


def test_an_answer_over_the_size_limit_is_a_413_when_measured(translator, monkeypatch):
    """An answer the estimate lets through (outputs longer than their sources, simulated by
    an estimate of 0) but over the limit when rendered is still refused: a real bound."""
    body = json.dumps({"text": ["a b c d", "e a b"], "beam": 2, "n_best": 2,
                       "return_attention": True}).encode()
    with serve_in_thread(create_app(translator, LIMITS, max_wait_ms=2.0)) as port:
        status, answer, _ = post(port, body)
    assert status == 200
    limit = len(json.dumps(answer, separators=(",", ":"))) // 2
    monkeypatch.setattr(server, "estimate_response_bytes", lambda *a, **k: 0)
    app = create_app(translator, ServeLimits(**{**LIMITS.__dict__, "max_response_bytes": limit}),
                     max_wait_ms=2.0)
    with serve_in_thread(app) as port:
        status, answer, _ = post(port, body)
        assert status == 413 and f"max_response_bytes = {limit}" in answer["error"], answer
        assert "the answer is" in answer["error"]  # measured, not estimated
        assert app.state.batcher.calls == 1  # it was translated, then refused
        assert healthy(port)


# --------------------------------------------------------------------------- 4: text input

# each class of character the input rule refuses (as in tests/test_faults_input.py)
CONTROL_CHARS = {
    "NUL": "\x00", "BEL": "\x07", "ESC": "\x1b", "DEL": "\x7f", "NEL (C1)": "\x85",
    "CSI (C1)": "\x9b", "LRE": "\u202a", "RLO": "\u202e", "LRI": "\u2066", "PDI": "\u2069",
    "line feed": "\n",
}


@pytest.fixture(scope="module")
def char_live(tmp_path_factory):
    """A server of a model whose every input character is a piece (a BOM or a space would
    reach it): (app, port)."""
    model = train_tiny(tmp_path_factory.mktemp("faults") / "char", tokenizer="char")
    app = create_app(attendo.load(model), LIMITS, max_wait_ms=2.0)
    with serve_in_thread(app) as port:
        yield app, port


@pytest.mark.parametrize("name", sorted(CONTROL_CHARS))
def test_a_control_character_is_a_422_naming_sentence_and_position(char_live, name):
    app, port = char_live
    c = CONTROL_CHARS[name]
    calls = app.state.batcher.calls
    body = json.dumps({"text": ["a b", f"ab{c}c"]}).encode()
    status, answer, _ = post(port, body)
    assert status == 422, answer
    assert answer["error"].startswith(f"sentence 1: control character U+{ord(c):04X}"), answer
    assert "at character 3" in answer["error"]
    assert app.state.batcher.calls == calls  # refused before translating


def test_a_bom_is_dropped_and_whitespace_only_is_empty(char_live):
    _, port = char_live
    records = {}
    for name, text in (("plain", "a b c"), ("bom", "\ufeffa b c"), ("padded", " a b c\t")):
        status, answer, _ = post(port, json.dumps({"text": text, "beam": 1}).encode())
        assert status == 200, answer
        records[name] = answer["translations"][0]
    assert records["bom"] == records["plain"] == records["padded"]
    assert records["plain"]["source"] == "a b c"
    body = json.dumps({"text": [" ", "\t\u00a0 ", "\ufeff"], "beam": 2, "n_best": 2,
                       "return_attention": True, "alignment": True}).encode()
    status, answer, _ = post(port, body)
    assert status == 200, answer
    for rec in answer["translations"]:
        assert (rec["source"], rec["text"], rec["src_tokens"]) == ("", "", [])


# --------------------------------------------------------------------------- 5: connections

HEADER_TIMEOUT = 3.0
# what a slow client sent before it stalled: nothing, part of a request line, part of headers
SLOW_STARTS = [b"", b"PO", b"POST /translate HT", b"GET /health HTTP/1.1\r\nHost: x\r\n",
               b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: appl"]


def read_to_eof(socks: list[socket.socket], timeout: float) -> dict[socket.socket, tuple]:
    """Read every socket until the server closes it: {socket: (bytes, monotonic time of EOF)}.
    Fails if one is still open after ``timeout`` seconds."""
    data = {s: b"" for s in socks}
    done: dict[socket.socket, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(socks):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{len(socks) - len(done)} of {len(socks)} connections still open "
                        f"{timeout:g} s on")
        ready, _, _ = select.select([s for s in socks if s not in done], [], [], left)
        for s in ready:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                data[s] += chunk
            else:
                done[s] = (data[s], time.monotonic())
    return done


def test_slow_headers_are_cut_off_while_others_are_served(translator):
    """50 clients that stall inside their request line or headers (or send nothing) hold no
    slot: requests are answered while they wait, and each is closed by the server
    header_timeout_s after it connected, with a 408 naming the limit where a request had
    begun. A kept-alive connection that stalls in its second request is cut off the same way."""
    limits = ServeLimits(**{**LIMITS.__dict__, "header_timeout_s": HEADER_TIMEOUT,
                            "keep_alive_s": 60.0})  # the kept connection is cut by the header limit
    with serve_in_thread(create_app(translator, limits, max_wait_ms=2.0)) as port:
        t0 = time.monotonic()
        slow = []
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(SLOW_STARTS[i % len(SLOW_STARTS)])
            slow.append(s)
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = http.client.HTTPResponse(kept)
        first.begin()
        assert first.status == 200 and json.loads(first.read())["status"] == "ok"
        try:
            for _ in range(3):  # served while the 50 are held
                status, answer, _ = post(port, b'{"text": "a b"}')
                assert status == 200 and answer["translations"]
            assert healthy(port)
            answered = time.monotonic()
            kept.sendall(b"GET /heal")  # the next request on the kept connection stalls
            closed = read_to_eof(slow + [kept], HEADER_TIMEOUT + 15)
            for i, s in enumerate(slow):
                data, when = closed[s]
                assert when > answered  # held until after the others were served
                assert HEADER_TIMEOUT * 0.9 <= when - t0 < HEADER_TIMEOUT + 10, when - t0
                if SLOW_STARTS[i % len(SLOW_STARTS)]:
                    assert data.startswith(b"HTTP/1.1 408 "), data
                    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
                    assert "header_timeout_s" in error and f"{HEADER_TIMEOUT:g} s" in error
                else:
                    assert data == b"", data  # never a word: closed without an answer
            data, when = closed[kept]
            assert data.startswith(b"HTTP/1.1 408 ") and when - answered >= HEADER_TIMEOUT * 0.9
            assert healthy(port)
        finally:
            for s in slow + [kept]:
                s.close()


def test_an_answered_body_that_dribbles_on_is_cut_off(live):
    """A route that reads no body answers at once; a client that goes on sending that body a
    byte at a time (each byte disarms uvicorn's keep-alive timer) is closed read_timeout_s
    after its first byte past the answer."""
    _, port = live
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        r = http.client.HTTPResponse(s)
        r.begin()
        assert r.status == 405
        r.read()
        t0 = time.monotonic()
        while True:  # until the server closes the connection
            assert time.monotonic() < t0 + READ_TIMEOUT + 10, "still open"
            with contextlib.suppress(OSError):
                s.send(b"x")
            if select.select([s], [], [], 0.2)[0]:
                try:
                    if s.recv(100) == b"":
                        break
                except ConnectionResetError:
                    break
        assert time.monotonic() - t0 >= READ_TIMEOUT * 0.9
    finally:
        s.close()
    assert healthy(port)


def test_connections_over_the_limit_get_a_503_and_the_server_recovers(translator):
    """With max_connections open, one more is answered 503 (JSON, naming the limit) and
    closed at once; once one closes, requests are served again."""
    limits = ServeLimits(**{**LIMITS.__dict__, "max_connections": 5, "keep_alive_s": 60.0})
    with serve_in_thread(create_app(translator, limits, max_wait_ms=2.0)) as port:
        held = []
        for _ in range(5):  # kept-alive connections the server has certainly accepted
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            r = http.client.HTTPResponse(s)
            r.begin()
            assert r.status == 200
            r.read()
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            (data, _), = read_to_eof([extra], 15).values()
            assert data.startswith(b"HTTP/1.1 503 "), data
            error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
            assert "max_connections" in error and "5 connections" in error
        finally:
            extra.close()
        held.pop().close()
        deadline = time.monotonic() + 15
        while True:  # until the server has seen the close (then a request gets through)
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (data, _), = read_to_eof([s], 15).values()
            s.close()
            if data.startswith(b"HTTP/1.1 200 "):
                break
            assert data.startswith(b"HTTP/1.1 503 ") and time.monotonic() < deadline, data
        for s in held:
            s.close()


# --------------------------------------------------------------------------- 6: malformed bodies

MALFORMED = {
    "truncated JSON": (b'{"text": "a b', "application/json"),
    "trailing junk": (b'{"text": "a b"} xyz', "application/json"),
    "empty body": (b"", "application/json"),
    "JSON null": (b"null", "application/json"),
    "text null": (b'{"text": null}', "application/json"),
    "text a nested list": (b'{"text": [["a"], ["b"]]}', "application/json"),
    "beam a list": (b'{"text": "a", "beam": [2]}', "application/json"),
    "n_best a string": (b'{"text": "a", "n_best": "1"}', "application/json"),
    "beam negative": (b'{"text": "a", "beam": -3}', "application/json"),
    "beam 1e400 (inf)": (b'{"text": "a", "beam": 1e400}', "application/json"),
    "beam NaN": (b'{"text": "a", "beam": NaN}', "application/json"),
    "beam of 5000 digits": (b'{"text": "a", "beam": ' + b"9" * 5000 + b"}", "application/json"),
    "n_best of 400 digits": (b'{"text": "a", "n_best": 1' + b"0" * 400 + b"}",
                             "application/json"),
    "nested arrays": (b"[" * 20000 + b"]" * 20000, "application/json"),
    "nested objects": (b'{"a":' * 20000 + b"1" + b"}" * 20000, "application/json"),
    "nested junk in text": (b'{"text": ' + b'[{"x": [' * 500 + b"]}]" * 500 + b"}",
                            "application/json"),
    "duplicate keys, last wrong": (b'{"text": "a", "text": 5}', "application/json"),
    "invalid UTF-8": (b'{"text": "a \xff\xfe b"}', "application/json"),
    "overlong UTF-8": (b'{"text": "\xc0\xaf"}', "application/json"),
    "UTF-16 BOM then junk": (b"\xff\xfe{\x00\xff", "application/json"),
    "escaped lone surrogate": (b'{"text": "\\udc80"}', "application/json"),
    "NUL bytes": (b"\x00" * 64, "application/json"),
    "form-encoded": (b"text=a+b&beam=2", "application/x-www-form-urlencoded"),
    "multipart": (b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\na b\r\n--x--\r\n',
                  "multipart/form-data; boundary=x"),
    "XML": (b"<translate><text>a b</text></translate>", "application/xml"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_get_a_json_4xx_never_a_5xx(live, name):
    _, port = live
    body, content_type = MALFORMED[name]
    with server_logs() as records:
        status, answer, _ = post(port, body, content_type)
    assert 400 <= status < 500, (name, status, answer)
    assert isinstance(answer["error"], str) and answer["error"]
    assert not [r for r in records if r.levelno >= logging.ERROR]
    assert post(port, b'{"text": "a b"}')[0] == 200  # still serving


# --------------------------------------------------------------------------- parse_request fuzz

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=5),
    max_leaves=20,
)
# objects shaped like requests, so that the checks past the first few are reached too
REQUESTS = st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=40) | st.lists(st.text(max_size=40), max_size=6) | JSON,
    "beam": st.integers(-2, 6) | JSON,
    "n_best": st.integers(-2, 6) | JSON,
    "return_attention": st.booleans() | JSON,
}) | st.dictionaries(st.sampled_from(REQUEST_KEYS) | st.text(max_size=8), JSON, max_size=5)


def check_parse(body: bytes, translator) -> None:
    """parse_request either gives a request within LIMITS or a RequestError with a 4xx."""
    def count_tokens(text: str) -> int:
        return len(translator.src.pieces(text))

    try:
        req = parse_request(body, LIMITS, 2, count_tokens)
    except RequestError as e:
        assert 400 <= e.status < 500 and isinstance(e.message, str) and e.message
        return
    texts, beam, n_best, attn = req.texts, req.beam, req.n_best, req.return_attention
    assert isinstance(texts, list) and 1 <= len(texts) <= LIMITS.max_sentences
    assert all(isinstance(t, str) and len(t) <= LIMITS.max_chars for t in texts)
    assert type(beam) is int and 1 <= beam <= LIMITS.max_beam
    assert type(n_best) is int and 1 <= n_best <= beam
    assert type(attn) is bool
    assert all(clean_text(t) == t for t in texts)  # checked and cleaned (BOM, whitespace)
    n_tokens = [count_tokens(t) for t in texts]
    assert max(n_tokens) <= LIMITS.max_tokens
    assert estimate_response_bytes(texts, n_tokens, n_best, attn) > 0


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.binary(max_size=200))
def test_parse_request_fuzz_bytes(translator, body):
    check_parse(body, translator)


@FUZZ
@given(value=JSON | REQUESTS, ensure_ascii=st.booleans())
def test_parse_request_fuzz_json_values(translator, value, ensure_ascii):
    check_parse(json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass"),
                translator)


@FUZZ
@given(value=REQUESTS, cut=st.integers(0, 400), junk=st.binary(max_size=4))
def test_parse_request_fuzz_damaged_json(translator, value, cut, junk):
    """Valid-looking requests, truncated or with bytes spliced in."""
    body = json.dumps(value).encode()
    cut = min(cut, len(body))
    check_parse(body[:cut] + junk + body[cut:], translator)


def test_fuzz_reaches_the_success_path(translator):
    """The fuzz above is not all refusals: a request drawn like them parses."""
    check_parse(b'{"text": ["a b", ""], "beam": 3, "n_best": 2}', translator)
    assert parse_request(b'{"text": "a b"}', LIMITS, 2, lambda t: 2) == TranslateRequest(["a b"], 2, 1, False)

