"""attendo serve with the decoding options of issue 32: prefix, constraints, sampling and
replace_unk over HTTP (each one end to end, each bad value a 4xx naming its field), batching
that keeps requests with different options apart where it must, and an ensemble server."""

from __future__ import annotations

import json
import threading
import warnings

import pytest

pytest.importorskip("fastapi", reason="attendo serve needs fastapi: pip install 'attendo[serve]'")
with warnings.catch_warnings():  # newer Starlette prefers httpx2; httpx still works
    warnings.simplefilter("ignore")
    TestClient = pytest.importorskip("fastapi.testclient").TestClient

import torch  # noqa: E402

import attendo  # noqa: E402
from attendo.cli import main  # noqa: E402
from attendo.errors import UsageError  # noqa: E402
from attendo.search import Sampling  # noqa: E402
from attendo.server import (  # noqa: E402
    MicroBatcher,
    ServeLimits,
    batch_key,
    create_app,
    parse_request,
)
from attendo.server.limits import RequestError  # noqa: E402
from attendo.translator import Translator  # noqa: E402

LIMITS = ServeLimits(max_body_bytes=8000, max_sentences=4, max_chars=300, max_tokens=20,
                     max_beam=4, max_constraints=3, timeout_s=30.0)


@pytest.fixture(scope="module")
def translator(trained):
    return attendo.load(trained)


@pytest.fixture(scope="module")
def client(translator):
    with TestClient(create_app(translator, LIMITS, max_wait_ms=2.0)) as c:
        yield c


def post(c, payload) -> dict:
    r = c.post("/translate", json=payload)
    assert r.status_code == 200, (payload, r.text)
    return r.json()


def words_contain(text: str, phrase: str) -> bool:
    w, p = text.split(), phrase.split()
    return any(w[i : i + len(p)] == p for i in range(len(w) - len(p) + 1))


# --------------------------------------------------------------------------- each option


def test_prefix_starts_every_output(client, translator):
    rec, = post(client, {"text": "a b c", "beam": 3, "n_best": 2, "prefix": "e d"})["translations"]
    assert rec["text"].split()[:2] == ["e", "d"]
    assert all(h["text"].split()[:2] == ["e", "d"] for h in rec["hyps"])
    # per sentence: a list with null for none
    recs = post(client, {"text": ["a b", "c d e"], "beam": 2,
                         "prefix": ["c", None]})["translations"]
    direct = translator.translate(["a b", "c d e"], beam=2, prefixes=["c", None])
    assert [r["text"] for r in recs] == [t.text for t in direct]
    assert recs[0]["text"].split()[0] == "c"
    assert recs[1]["text"] == translator.translate(["c d e"], beam=2)[0].text


def test_constraints_all_appear(client, translator):
    cons = ["e", "a b"]
    rec, = post(client, {"text": "c d", "beam": 3, "constraints": cons})["translations"]
    assert all(words_contain(rec["text"], c) for c in cons), rec["text"]
    assert rec["text"] == translator.translate(["c d"], beam=3, constraints=[cons])[0].text
    # per sentence, with a prefix too
    recs = post(client, {"text": ["a b", "c d e", "d"], "beam": 2, "prefix": ["b", None, None],
                         "constraints": [["c"], None, ["e d", "a"]]})["translations"]
    assert recs[0]["text"].split()[0] == "b" and words_contain(recs[0]["text"], "c")
    assert words_contain(recs[2]["text"], "e d") and words_contain(recs[2]["text"], "a")
    assert recs[1]["text"] == translator.translate(["c d e"], beam=2)[0].text
    # greedy (beam 1) keeps them too
    rec, = post(client, {"text": "a b c", "beam": 1, "constraints": ["j"]})["translations"]
    assert words_contain(rec["text"], "j")


def test_sampling_is_reproducible_by_seed_and_gives_n_samples(client, translator):
    texts = ["a b c d", "e d"]
    req = {"text": texts, "sampling": {"temperature": 3.0, "n": 3, "seed": 7}}
    first, again = post(client, req)["translations"], post(client, req)["translations"]
    assert first == again
    for rec in first:
        assert len(rec["hyps"]) == 3
        scores = [h["score"] for h in rec["hyps"]]
        assert scores == sorted(scores, reverse=True)
    direct = translator.translate(texts, sampling=Sampling(temperature=3.0, n=3, seed=7))
    assert [[h["text"] for h in r["hyps"]] for r in first] == \
        [[h.text for h in t.nbest] for t in direct]
    # other seeds draw other samples (at temperature 3 the toy model's outputs vary)
    others = {json.dumps([h["text"] for h in post(client, {**req, "sampling": {
        "temperature": 3.0, "n": 3, "seed": s}})["translations"][0]["hyps"]]) for s in range(4)}
    assert len(others) > 1


def test_top_k_1_sampling_is_greedy(client):
    texts = ["a b c", "d e a b", "c"]
    greedy = post(client, {"text": texts, "beam": 1})["translations"]
    sampled = post(client, {"text": texts, "sampling": {"top_k": 1, "temperature": 5.0,
                                                        "seed": 3}})["translations"]
    assert [r["text"] for r in sampled] == [r["text"] for r in greedy]
    # and the nucleus of a tiny top_p is the most probable token alone
    tiny = post(client, {"text": texts, "sampling": {"top_p": 1e-30}})["translations"]
    assert [r["text"] for r in tiny] == [r["text"] for r in greedy]


def test_replace_unk_reports_unk_replaced(client):
    # the prefix "zz" is outside the target vocabulary: the output starts with <unk>
    plain, = post(client, {"text": "a zz q", "beam": 2, "prefix": "zz"})["translations"]
    assert plain["text"].split()[0] == "<unk>" and "unk_replaced" not in plain
    rec, = post(client, {"text": "a zz q", "beam": 2, "n_best": 2, "prefix": "zz",
                         "replace_unk": True})["translations"]
    assert rec["unk_replaced"] >= 1 and "<unk>" not in rec["text"]
    assert rec["text"].split()[0] in ("a", "zz", "q")  # a source word
    assert all("unk_replaced" in h for h in rec["hyps"])
    assert rec["hyps"][0]["unk_replaced"] == rec["unk_replaced"]
    assert "attention" not in rec["hyps"][0]  # read for the replacement, not sent
    rec, = post(client, {"text": "a b", "replace_unk": True})["translations"]
    assert rec["unk_replaced"] == 0


def test_health_shows_the_new_limit(client):
    assert client.get("/health").json()["limits"]["max_constraints"] == 3


# --------------------------------------------------------------------------- bad values

BAD = {
    # name: (body, status, what the error must name)
    "prefix a number": ({"text": "a", "prefix": 5}, 422, '"prefix"'),
    "prefix list too short": ({"text": ["a", "b"], "prefix": ["a"]}, 422, '"prefix"'),
    "prefix list of numbers": ({"text": "a", "prefix": [1]}, 422, '"prefix"'),
    "prefix control char": ({"text": "a", "prefix": "a\x00b"}, 422, '"prefix" of sentence 0'),
    "prefix too long": ({"text": "a", "prefix": "a" * 301}, 413, '"prefix" of sentence 0'),
    "constraints a string": ({"text": "a", "constraints": "a"}, 422, '"constraints"'),
    "constraints numbers": ({"text": "a", "constraints": [1]}, 422, '"constraints"'),
    "constraints too many lists": ({"text": "a", "constraints": [["a"], ["b"]]}, 422,
                                   '"constraints"'),
    "constraints mixed": ({"text": ["a", "b"], "constraints": ["a", ["b"]]}, 422,
                          '"constraints"'),
    "constraints a list of numbers": ({"text": ["a", "b"], "constraints": [[1], None]}, 422,
                                      '"constraints" of sentence 0'),
    "constraint empty": ({"text": "a", "constraints": [" "]}, 422,
                         '"constraints" of sentence 0, constraint 0'),
    "constraint outside the vocabulary": ({"text": "a", "constraints": ["a", "zz"]}, 422,
                                          "'zz'"),
    "constraint control char": ({"text": ["a", "b"], "constraints": [None, ["\x07"]]}, 422,
                                '"constraints" of sentence 1, constraint 0'),
    "too many constraints": ({"text": "a", "constraints": ["a", "b", "c", "d"]}, 413,
                             '"constraints" of sentence 0'),
    "constraint too long": ({"text": "a", "constraints": ["a " * 151]}, 413, '"constraints"'),
    "too many target tokens": ({"text": "a", "prefix": "a b c d e f g h i j",
                                "constraints": ["a b c d e", "f g h i j", "a"]}, 413,
                               '"prefix" and "constraints" of sentence 0'),
    "sampling a string": ({"text": "a", "sampling": "yes"}, 422, '"sampling"'),
    "sampling unknown key": ({"text": "a", "sampling": {"temp": 1}}, 422, '"sampling.temp"'),
    "temperature zero": ({"text": "a", "sampling": {"temperature": 0}}, 422,
                         '"sampling.temperature"'),
    "temperature negative": ({"text": "a", "sampling": {"temperature": -1.0}}, 422,
                             '"sampling.temperature"'),
    "temperature underflowing": ({"text": "a", "sampling": {"temperature": 1e-40}}, 422,
                                 '"sampling.temperature"'),
    "temperature a string": ({"text": "a", "sampling": {"temperature": "1"}}, 422,
                             '"sampling.temperature"'),
    "temperature a bool": ({"text": "a", "sampling": {"temperature": True}}, 422,
                           '"sampling.temperature"'),
    "temperature null": ({"text": "a", "sampling": {"temperature": None}}, 422,
                         '"sampling.temperature"'),
    "top_p zero": ({"text": "a", "sampling": {"top_p": 0}}, 422, '"sampling.top_p"'),
    "top_p above 1": ({"text": "a", "sampling": {"top_p": 1.5}}, 422, '"sampling.top_p"'),
    "top_k negative": ({"text": "a", "sampling": {"top_k": -1}}, 422, '"sampling.top_k"'),
    "top_k a float": ({"text": "a", "sampling": {"top_k": 1.5}}, 422, '"sampling.top_k"'),
    "n zero": ({"text": "a", "sampling": {"n": 0}}, 422, '"sampling.n"'),
    "n above max_beam": ({"text": "a", "sampling": {"n": 5}}, 422, '"sampling.n"'),
    "seed negative": ({"text": "a", "sampling": {"seed": -1}}, 422, '"sampling.seed"'),
    "seed too large": ({"text": "a", "sampling": {"seed": 2**63}}, 422, '"sampling.seed"'),
    "seed a string": ({"text": "a", "sampling": {"seed": "x"}}, 422, '"sampling.seed"'),
    "sampling with constraints": ({"text": "a", "sampling": {}, "constraints": ["a"]}, 422,
                                  '"constraints"'),
    "sampling with n_best": ({"text": "a", "sampling": {"n": 2}, "n_best": 2, "beam": 2}, 422,
                             '"n_best"'),
    "replace_unk a string": ({"text": "a", "replace_unk": "yes"}, 422, '"replace_unk"'),
    "replace_unk a number": ({"text": "a", "replace_unk": 1}, 422, '"replace_unk"'),
}
RAW = {  # bodies json.dumps cannot write
    "temperature NaN": (b'{"text": "a", "sampling": {"temperature": NaN}}', 422,
                        '"sampling.temperature"'),
    "temperature Infinity": (b'{"text": "a", "sampling": {"temperature": Infinity}}', 422,
                             '"sampling.temperature"'),
    "huge integer temperature": (b'{"text": "a", "sampling": {"temperature": 1' + b"0" * 400
                                 + b"}}", 422, '"sampling.temperature"'),
    "top_p NaN": (b'{"text": "a", "sampling": {"top_p": NaN}}', 422, '"sampling.top_p"'),
}


@pytest.mark.parametrize("name", list(BAD) + list(RAW))
def test_bad_values_get_a_4xx_naming_the_field(client, name):
    body, status, names = BAD[name] if name in BAD else RAW[name]
    calls = client.app.state.batcher.calls
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/translate", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, (name, r.text)
    assert names in r.json()["error"], (name, r.json())
    assert client.app.state.batcher.calls == calls  # refused before translating
    assert client.post("/translate", json={"text": "a b"}).status_code == 200


def test_replace_unk_without_attention_is_a_422(tmp_path):
    from conftest import train_tiny

    t = attendo.load(train_tiny(tmp_path / "noattn", attention="none"))
    with TestClient(create_app(t, LIMITS, max_wait_ms=0.0)) as c:
        r = c.post("/translate", json={"text": "a b", "replace_unk": True})
        assert r.status_code == 422 and '"replace_unk"' in r.json()["error"]
        assert post(c, {"text": "a b", "prefix": "c"})["translations"][0]["text"].startswith("c")


def test_a_user_error_from_the_translator_is_a_422(translator):
    app = create_app(translator, LIMITS, max_wait_ms=0.0)

    def refuse(*a):
        raise UsageError("constraints[0]: something only the translator knows")

    with TestClient(app) as c:
        app.state.batcher.run = refuse
        r = c.post("/translate", json={"text": "a", "constraints": ["a"]})
        assert r.status_code == 422 and "only the translator knows" in r.json()["error"]


def test_parse_request_keeps_its_defaults():
    req = parse_request(b'{"text": "a b"}', LIMITS, 2, lambda t: 2)
    assert (req.prefixes, req.constraints, req.sampling, req.replace_unk) == \
        (None, None, None, False)
    req = parse_request(b'{"text": ["a", "b"], "prefix": ["", null], "constraints": [[], null],'
                        b' "sampling": {}}', LIMITS, 2, lambda t: 1)
    assert req.prefixes is None and req.constraints is None and req.sampling == Sampling()
    assert req.outputs == 1

    def check(r):  # the model's checks come last, on the parsed request
        raise RequestError(422, f"n={r.outputs}")

    with pytest.raises(RequestError) as e:
        parse_request(b'{"text": "a", "sampling": {"n": 3}}', LIMITS, 2, lambda t: 1, check)
    assert e.value.message == "n=3"


# --------------------------------------------------------------------------- batching


def test_batch_keys_keep_what_must_not_share_a_call_apart():
    def key(body: dict):
        return batch_key(parse_request(json.dumps(body).encode(), LIMITS, 2, lambda t: 1))

    plain = key({"text": "a", "beam": 1})
    assert key({"text": "b", "beam": 1, "prefix": "c"}) == plain  # prefixes ride along
    constrained = key({"text": "b", "beam": 1, "constraints": ["c"]})
    assert constrained != plain  # beam 1 with constraints is a beam search, not greedy
    assert key({"text": "b", "beam": 1, "constraints": ["d", "e"]}) == constrained
    assert key({"text": "a", "beam": 1, "replace_unk": True}) != plain
    s = {"text": "a", "sampling": {"seed": 1}}
    assert key(s) != key(s)  # each sampling request alone: its samples depend on the call


def test_concurrent_requests_with_different_options_get_their_own_answers(translator):
    """Many clients at once, with every mix of options: each answer is what the translator
    gives that request alone, and requests of equal options were still merged."""
    kinds = [
        ({"beam": 2}, {"beam": 2}),
        ({"beam": 2, "prefix": "e d"}, {"beam": 2, "prefixes": ["e d"]}),
        ({"beam": 2, "constraints": ["a", "j"]}, {"beam": 2, "constraints": [["a", "j"]]}),
        ({"beam": 1}, {"beam": 1}),
        ({"beam": 1, "constraints": ["b"]}, {"beam": 1, "constraints": [["b"]]}),
        ({"beam": 3, "n_best": 2}, {"beam": 3, "n_best": 2}),
        ({"sampling": {"temperature": 3.0, "n": 2, "seed": 5}},
         {"sampling": Sampling(temperature=3.0, n=2, seed=5)}),
        ({"beam": 2, "prefix": "zz", "replace_unk": True},
         {"beam": 2, "prefixes": ["zz"], "replace_unk": True}),
    ]
    sources = ["a b c", "d e", "c a b d"]  # 3: each kind meets two sources
    n = 2 * len(kinds)
    jobs = [(sources[i % len(sources)], *kinds[i % len(kinds)]) for i in range(n)]
    expected = []
    for src, _, opts in jobs:
        (t,) = translator.translate([src], **opts)
        expected.append([h.text for h in t.nbest or [t]])
    answers: list = [None] * n
    app = create_app(translator, LIMITS, max_batch=32, max_wait_ms=300.0)
    with TestClient(app) as c:
        barrier = threading.Barrier(n)

        def go(i):
            src, req, _ = jobs[i]
            barrier.wait()
            answers[i] = c.post("/translate", json={"text": src, **req})

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = app.state.batcher.calls
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        (rec,) = r.json()["translations"]
        assert [h["text"] for h in rec["hyps"]] == expected[i], (jobs[i], rec["hyps"])
        if jobs[i][1].get("replace_unk"):
            assert rec["unk_replaced"] >= 1
        else:
            assert "unk_replaced" not in rec
    assert calls < n  # equal options were merged


def test_a_failing_merged_call_is_retried_job_by_job():
    calls = []

    def run(texts):
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("bad input")
        return [t.upper() for t in texts]

    b = MicroBatcher(run, max_batch=8, max_wait_ms=200.0)
    try:
        good, bad, other = b.submit(["x", "y"]), b.submit(["bad"]), b.submit(["z"])
        assert good.result(5) == ["X", "Y"] and other.result(5) == ["Z"]
        with pytest.raises(ValueError, match="bad input"):
            bad.result(5)
    finally:
        b.close()
    assert calls == [["x", "y", "bad", "z"], ["x", "y"], ["bad"], ["z"]]
    assert b.calls == 2 and b.jobs == 2 and b.queued == 0


# --------------------------------------------------------------------------- ensemble


def test_serve_several_models_is_an_ensemble(trained, monkeypatch):
    import uvicorn

    import attendo.server as server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda *a: seen.setdefault("args", a))
    assert main(["serve", "--model", str(trained), str(trained), "--max-constraints", "5"]) == 0
    model, limits = seen["args"][0], seen["args"][7]
    assert model == [str(trained), str(trained)] and limits.max_constraints == 5
    monkeypatch.undo()

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: apps.append(self.config.app))
    server.serve([str(trained), str(trained)], port=0, limits=LIMITS)
    (app,) = apps
    ensemble = Translator.ensemble([trained, trained])
    with TestClient(app) as c:
        health = c.get("/health").json()
        assert health["model"]["name"] == f"{trained.name}+{trained.name}"
        rec, = post(c, {"text": "a b c", "beam": 2, "constraints": ["e"],
                        "replace_unk": True})["translations"]
        direct = ensemble.translate(["a b c"], beam=2, constraints=[["e"]], replace_unk=True)
        assert rec["text"] == direct[0].text and words_contain(rec["text"], "e")


def test_the_new_options_over_a_real_http_server(translator):
    """The same options through uvicorn and a socket, as clients send them."""
    import http.client

    from conftest import serve_in_thread

    def send(port, payload) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/translate", body=json.dumps(payload),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        out = r.status, json.loads(r.read())
        conn.close()
        return out

    with serve_in_thread(create_app(translator, LIMITS, max_wait_ms=2.0)) as port:
        status, answer = send(port, {"text": ["a b c", "a zz q"], "beam": 2,
                                     "prefix": [None, "zz"], "constraints": [["e"], None],
                                     "replace_unk": True})
        assert status == 200, answer
        first, second = answer["translations"]
        assert words_contain(first["text"], "e") and second["unk_replaced"] >= 1
        req = {"text": "a b c d", "sampling": {"temperature": 2.0, "top_p": 0.9, "n": 2,
                                                "seed": 11}}
        hyps = [[h["text"] for h in send(port, req)[1]["translations"][0]["hyps"]]
                for _ in range(2)]
        assert hyps[0] == hyps[1] and len(hyps[0]) == 2
        status, answer = send(port, {"text": "a", "constraints": ["zz"]})
        assert status == 422 and "'zz'" in answer["error"]


def test_serve_unk_dict_is_the_translators_dictionary(trained, tmp_path, monkeypatch):
    """`attendo serve --unk-dict FILE`: requests with "replace_unk" use that dictionary."""
    import uvicorn

    import attendo.server as server

    lex = tmp_path / "lex.txt"
    lex.write_text("a ALPHA 0.9\nb BETA\n", encoding="utf-8")
    seen = {}
    monkeypatch.setattr(server, "serve", lambda *a: seen.setdefault("args", a))
    assert main(["serve", "--model", str(trained), "--unk-dict", str(lex)]) == 0
    assert seen["args"][-1] == str(lex)
    monkeypatch.undo()
    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: apps.append(self.config.app))
    server.serve(str(trained), port=0, limits=LIMITS, unk_dict=str(lex))
    (app,) = apps
    assert app.state.translator.unk_dict == {"a": "ALPHA", "b": "BETA"}
    with torch.no_grad():  # the model writes <unk> at every step
        app.state.translator.model.decoder.out.bias[1] += 1e4
    with TestClient(app) as c:
        rec, = post(c, {"text": "a b", "beam": 2, "replace_unk": True})["translations"]
    assert rec["unk_replaced"] > 0 and set(rec["text"].split()) <= {"ALPHA", "BETA"}
