"""attendo serve: good requests, a 4xx (never a 500) for every bad one, micro-batching that
really merges concurrent requests, and a real uvicorn server over HTTP."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import serve_in_thread, train_tiny

pytest.importorskip("fastapi", reason="attendo serve needs fastapi: pip install 'attendo[serve]'")
with warnings.catch_warnings():  # newer Starlette prefers httpx2; httpx still works
    warnings.simplefilter("ignore")
    TestClient = pytest.importorskip("fastapi.testclient").TestClient

import attendo  # noqa: E402
from attendo.cli import main  # noqa: E402
from attendo.server import MicroBatcher, ServeLimits, create_app  # noqa: E402

LIMITS = ServeLimits(max_body_bytes=4000, max_sentences=4, max_chars=300, max_tokens=20,
                     max_beam=4, timeout_s=20.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def translator(model_dir):
    return attendo.load(model_dir)


@pytest.fixture
def client(translator):
    with TestClient(create_app(translator, LIMITS, max_wait_ms=2.0)) as c:
        yield c


# --------------------------------------------------------------------------- good requests


def test_translate_one_text(client, translator):
    r = client.post("/translate", json={"text": "a b c", "beam": 1})
    assert r.status_code == 200, r.text
    (rec,) = r.json()["translations"]
    (direct,) = translator.translate(["a b c"], beam=1)
    assert rec["text"] == direct.text and rec["source"] == "a b c"
    assert "attention" not in rec["hyps"][0]  # not asked for


def test_translate_a_list_with_attention_and_n_best(client):
    r = client.post("/translate", json={"text": ["a b c", "", "d e a b"], "beam": 3, "n_best": 2,
                                        "return_attention": True})
    assert r.status_code == 200, r.text
    recs = r.json()["translations"]
    assert [x["source"] for x in recs] == ["a b c", "", "d e a b"]
    assert recs[1]["text"] == ""  # empty in, empty out
    for rec in (recs[0], recs[2]):
        assert len(rec["hyps"]) == 2
        best = rec["hyps"][0]
        attn = np.array(best["attention"])
        assert attn.shape == (len(best["tgt_tokens"]), len(rec["src_tokens"]))
        np.testing.assert_allclose(attn.sum(1), 1.0, atol=5e-3)  # rounded to 3 decimals
        assert rec["score"] == best["score"] >= rec["hyps"][1]["score"]


def test_health_and_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"]["decoder"] == "rnn"
    assert h["limits"]["max_sentences"] == 4
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"mode":"live"' in page.text and 'fetch("translate"' in page.text
    assert "http://" not in page.text and "https://" not in page.text


# --------------------------------------------------------------------------- bad requests

BAD = {
    "malformed JSON": (b'{"text": "a b', 400),
    "not JSON at all": (b"\xff\xfe\x00", 400),
    "deeply nested": (b"[" * 1900 + b"]" * 1900, 400),
    "an array, not an object": (b'["a b"]', 422),
    "a string, not an object": (b'"a b"', 422),
    "no text": (b'{"beam": 2}', 422),
    "empty list": (b'{"text": []}', 422),
    "text a number": (b'{"text": 5}', 422),
    "text a list with a number": (b'{"text": ["a", 5]}', 422),
    "text an object": (b'{"text": {"a": 1}}', 422),
    "beam a string": (b'{"text": "a", "beam": "5"}', 422),
    "beam a bool": (b'{"text": "a", "beam": true}', 422),
    "beam a float": (b'{"text": "a", "beam": 2.5}', 422),
    "beam zero": (b'{"text": "a", "beam": 0}', 422),
    "beam too large": (b'{"text": "a", "beam": 99}', 422),
    "huge integer beam": (b'{"text": "a", "beam": 1' + b"0" * 400 + b"}", 422),
    "n_best above beam": (b'{"text": "a", "beam": 2, "n_best": 3}', 422),
    "return_attention a string": (b'{"text": "a", "return_attention": "yes"}', 422),
    "misspelt key": (b'{"txt": "a"}', 422),
    "lone surrogate": (b'{"text": "a \\ud800 b"}', 422),
    "too many sentences": (json.dumps({"text": ["a"] * 5}).encode(), 413),
    "too many characters": (json.dumps({"text": "a" * 301}).encode(), 413),
    "too many tokens": (json.dumps({"text": "a " * 21}).encode(), 413),
    "body too large": (json.dumps({"text": ["a"] * 1000}).encode(), 413),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_get_a_clear_4xx(client, name):
    body, status = BAD[name]
    r = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (name, r.text)
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    # and the server still answers a good request
    assert client.post("/translate", json={"text": "a b"}).status_code == 200


def test_unknown_routes_and_methods_are_json_4xx(client):
    for r, status in ((client.get("/nope"), 404), (client.get("/translate"), 405),
                      (client.put("/health"), 405)):
        assert r.status_code == status and "error" in r.json()


def test_timeout_is_a_408_and_a_crash_a_500_and_both_leave_the_server_up(translator):
    app = create_app(translator, ServeLimits(timeout_s=0.2), max_wait_ms=0.0)
    batcher = app.state.batcher
    real = batcher.run
    with TestClient(app, raise_server_exceptions=False) as c:
        batcher.run = lambda *a: (time.sleep(0.6), real(*a))[1]
        r = c.post("/translate", json={"text": "a b"})
        assert r.status_code == 408 and "limit" in r.json()["error"]
        time.sleep(0.6)  # let the worker finish the slow call

        def boom(*a):
            raise RuntimeError("boom")

        batcher.run = boom
        r = c.post("/translate", json={"text": "a b"})
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]
        batcher.run = real
        assert c.post("/translate", json={"text": "a b"}).status_code == 200


# --------------------------------------------------------------------------- batching


def concurrent_posts(c, n: int, payload) -> list[int]:
    barrier, codes = threading.Barrier(n), [0] * n

    def post(i):
        barrier.wait()
        codes[i] = c.post("/translate", json=payload(i)).status_code

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_concurrent_requests_are_merged_into_fewer_translator_calls(translator):
    n = 12
    with TestClient(create_app(translator, LIMITS, max_batch=32, max_wait_ms=150.0)) as c:
        before = c.app.state.batcher.calls
        codes = concurrent_posts(c, n, lambda i: {"text": "a b c"[: 1 + i % 5], "beam": 2})
        calls = c.app.state.batcher.calls - before
    assert codes == [200] * n
    assert 1 <= calls < n
    with TestClient(create_app(translator, LIMITS, max_batch=1, max_wait_ms=150.0)) as c:
        codes = concurrent_posts(c, n, lambda i: {"text": "a b", "beam": 2})
        assert codes == [200] * n
        assert c.app.state.batcher.calls == n  # --max-batch 1: batching off


def test_batcher_groups_by_options_and_routes_results_back():
    calls = []

    def run(texts, beam):
        calls.append((list(texts), beam))
        return [f"{t}/{beam}" for t in texts]

    b = MicroBatcher(run, max_batch=4, max_wait_ms=200.0)
    try:
        futs = [b.submit(["x1"], (1,)), b.submit(["y1", "y2"], (2,)), b.submit(["x2"], (1,)),
                b.submit(["z1", "z2"], (1,))]  # z would overflow 4 sentences: next window
        assert futs[0].result(5) == ["x1/1"] and futs[2].result(5) == ["x2/1"]
        assert futs[1].result(5) == ["y1/2", "y2/2"]
        assert futs[3].result(5) == ["z1/1", "z2/1"]
    finally:
        b.close()
    assert sorted(calls) == [(["x1", "x2"], 1), (["y1", "y2"], 2), (["z1", "z2"], 1)]
    assert b.calls == 3 and b.jobs == 4 and b.queued == 0


def test_batcher_survives_a_failing_call_and_skips_cancelled_jobs():
    seen = []
    gate = threading.Event()

    def run(texts):
        seen.append(list(texts))
        gate.wait(5)
        if "bad" in texts:
            raise ValueError("bad input")
        return list(texts)

    b = MicroBatcher(run, max_batch=1, max_wait_ms=0.0)
    try:
        first = b.submit(["bad"])
        time.sleep(0.1)  # the worker is now inside run(["bad"])
        dropped = b.submit(["gone"])
        assert dropped.cancel()  # a client that gave up before its turn
        later = b.submit(["ok"])
        gate.set()
        with pytest.raises(ValueError, match="bad input"):
            first.result(5)
        assert later.result(5) == ["ok"]
    finally:
        b.close()
    assert seen == [["bad"], ["ok"]]


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def live_server(translator):
    """A real uvicorn server in a thread: (host, port)."""
    with serve_in_thread(create_app(translator, LIMITS)) as port:
        yield "127.0.0.1", port


def test_real_server_over_http(live_server):
    conn = http.client.HTTPConnection(*live_server, timeout=30)
    conn.request("POST", "/translate", body=json.dumps({"text": ["a b", "c d e"]}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert len(json.loads(r.read())["translations"]) == 2
    # a chunked body (no Content-Length) over the limit is cut off while it streams in
    conn.putrequest("POST", "/translate")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b" " * 1000
    for _ in range(6):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 413 and "error" in json.loads(r.read())
    conn.close()


def test_serve_without_fastapi_says_what_to_install(monkeypatch, model_dir, capsys):
    monkeypatch.delitem(sys.modules, "attendo.server", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    assert main(["serve", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "attendo[serve]" in err and "fastapi" in err
