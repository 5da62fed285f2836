"""attendo serve with an image model: an image file as base64 in JSON is translated as
Translator.translate([path]) translates it, with attention over the regions of a grid the
answer describes; and, in the fault style of tests/test_faults_server.py (a LIVE uvicorn
server, a JSON 4xx naming the field, nothing logged as an error, the server still serving),
every bad image: invalid base64, not an image, truncated, too many bytes, a decompression
bomb, and the wrong kind of input for the model."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import random
import struct
import zlib

import numpy as np
import pytest
from conftest import serve_in_thread

pytest.importorskip("sklearn")
pytest.importorskip("fastapi", reason="attendo serve needs fastapi: pip install 'attendo[serve]'")
from PIL import Image as PILImage  # noqa: E402

import attendo  # noqa: E402
from attendo.server import ServeLimits, create_app  # noqa: E402
from attendo.translator import Translator  # noqa: E402

LIMITS = ServeLimits(max_sentences=4, max_beam=4, timeout_s=60.0,
                     max_image_bytes=64 * 1024, max_image_pixels=200_000)


# --------------------------------------------------------------------------- fixtures
# (digits and image_model: conftest.py's digit strings and 12-step model)


@pytest.fixture(scope="module")
def translator(image_model):
    return Translator.from_dir(image_model)


@pytest.fixture(scope="module")
def live(translator):
    """The image model served by uvicorn in a thread: (app, port)."""
    app = create_app(translator, LIMITS, max_wait_ms=2.0, name="digits")
    with serve_in_thread(app) as port:
        yield app, port


@pytest.fixture(scope="module")
def text_live(trained):
    """A text model served the same way: port."""
    with serve_in_thread(create_app(attendo.load(trained), LIMITS, max_wait_ms=2.0)) as port:
        yield port


# --------------------------------------------------------------------------- helpers


def request(port: int, method: str, path: str, body: dict | bytes | None = None
            ) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        assert r.getheader("content-type", "").startswith("application/json"), raw[:200]
        return r.status, json.loads(raw)
    finally:
        conn.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(image: PILImage.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (IHDR) claims ``width`` x ``height``, its checksum made right."""
    assert data[12:16] == b"IHDR"
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


@contextlib.contextmanager
def error_logs():
    """ERROR records of the loggers a failing request writes to (the 500 handler, uvicorn)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                records.append(record)

    h, names = Keep(), ("attendo", "uvicorn", "uvicorn.error", "asyncio", "")
    for name in names:
        logging.getLogger(name).addHandler(h)
    try:
        yield records
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(h)


# --------------------------------------------------------------------------- good requests


def test_a_png_translates_as_the_python_api_with_attention_on_its_grid(live, translator,
                                                                        digits):
    _, port = live
    path = digits / "images/test/000000.png"
    status, answer = request(port, "POST", "/translate",
                             {"image": b64(path.read_bytes()), "beam": 3, "n_best": 2,
                              "return_attention": True})
    assert status == 200, answer
    (rec,) = answer["translations"]
    (direct,) = translator.translate([str(path)], beam=3, n_best=2, return_attention=True)
    assert rec["text"] == direct.text and rec["hyps"][0]["text"] == direct.text
    assert [h["text"] for h in rec["hyps"]] == [h.text for h in direct.nbest]
    assert rec["source"] == "image 0" and rec["src_tokens"] == []
    pixels = translator.src.encode(str(path)).pixels  # (1, 16, W): as the model reads it
    rows, cols = translator.model.encoder.grid_shape(*pixels.shape[1:])
    assert rec["grid"] == {"rows": rows, "cols": cols, "cell": [4, 4],
                           "pixels": list(pixels.shape[1:])}
    for hyp in rec["hyps"]:
        attn = np.array(hyp["attention"])
        assert attn.shape == (len(hyp["tgt_tokens"]), rows * cols)
        # each weight is rounded to 3 decimals
        np.testing.assert_allclose(attn.sum(1), 1.0, atol=5e-4 * rows * cols + 1e-6)
    # the same weights as the Python API's, laid out as documented: column by column
    np.testing.assert_allclose(rec["hyps"][0]["attention"], direct.attention, atol=6e-4)
    first = direct.attention[0]
    grid = np.reshape(first, (cols, rows)).T  # (rows, cols)
    k = int(np.argmax(first))
    assert grid[k % rows, k // rows] == first.max()


def test_a_list_of_images_in_any_format_and_without_attention(live, translator, digits):
    _, port = live
    paths = [digits / f"images/test/00000{i}.png" for i in range(3)]
    rgb = PILImage.open(paths[1]).convert("RGB")
    sent = [b64(paths[0].read_bytes()), b64(png(rgb, "JPEG")), b64(png(PILImage.open(paths[2]),
                                                                          "GIF"))]
    status, answer = request(port, "POST", "/translate", {"image": sent, "beam": 2})
    assert status == 200, answer
    recs = answer["translations"]
    assert [r["source"] for r in recs] == ["image 0", "image 1", "image 2"]
    assert "attention" not in recs[0]["hyps"][0] and recs[0]["grid"]["rows"] == 4
    direct = translator.translate([str(paths[0]), str(paths[2])], beam=2)
    assert recs[0]["text"] == direct[0].text and recs[2]["text"] == direct[1].text  # lossless


def test_health_and_page_say_the_input_is_an_image(live, text_live):
    _, port = live
    status, health = request(port, "GET", "/health")
    assert status == 200 and health["input"] == "image" and health["model"]["input"] == "image"
    assert health["limits"]["max_image_bytes"] == 64 * 1024
    assert health["limits"]["max_image_pixels"] == 200_000
    assert request(text_live, "GET", "/health")[1]["input"] == "text"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse().read().decode()
    conn.close()
    assert 'id="image-input"' in page and '"input":"image"' in page
    assert "ATTENDO_IMAGES.draw" in page


# --------------------------------------------------------------------------- bad requests


def noise(width: int, height: int, seed: int = 0) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))


def digit_png() -> bytes:
    return png(PILImage.new("L", (40, 16), 255))


# name: (request, status, words the error must hold)
BAD_IMAGES = {
    "invalid base64": ({"image": "iVBORw0KGgo=!!"}, 422, ['"image"', "base64"]),
    "base64 with a line break": ({"image": b64(digit_png())[:20] + "\n" + b64(digit_png())[20:]},
                                 422, ['"image"', "base64"]),
    "base64 not ASCII": ({"image": "iVBORw0KGgo\u00e9"}, 422, ['"image"', "base64"]),
    "empty string": ({"image": ""}, 422, ['"image"', "empty"]),
    "not an image (random bytes)": ({"image": b64(random.Random(0).randbytes(3000))}, 422,
                                    ['"image"', "not an image", "PNG"]),
    "text, not an image": ({"image": b64(b"a b c d\n" * 20)}, 422, ['"image"', "not an image"]),
    "a format not read here (PPM)": ({"image": b64(b"P5 4 4 255\n" + bytes(16))}, 422,
                                     ['"image"', "not an image"]),
    "truncated PNG": ({"image": b64(png(noise(60, 40))[:900])}, 422,
                      ['"image"', "truncated", "complete"]),
    "truncated JPEG": ({"image": b64(png(noise(60, 40).convert("RGB"), "JPEG")[:700])}, 422,
                       ['"image"', "truncated"]),
    "PNG signature only": ({"image": b64(digit_png()[:8])}, 422, ['"image"']),
    "second of a list bad": ({"image": [b64(digit_png()), b64(b"junk")]}, 422,
                             ['"image" 1', "not an image"]),
    "over the byte limit": ({"image": b64(png(noise(300, 300)))}, 413,
                            ['"image"', "max_image_bytes", str(64 * 1024)]),
    "over the pixel limit": ({"image": b64(png(PILImage.new("L", (600, 400), 255)))}, 413,
                             ['"image"', "600x400", "max_image_pixels"]),
    "bomb: header claims 1000x1000": ({"image": b64(with_size(digit_png(), 1000, 1000))}, 413,
                                      ['"image"', "1000x1000", "max_image_pixels"]),
    "bomb: header claims 100000x100000": (
        {"image": b64(with_size(digit_png(), 100_000, 100_000))}, 413,
        ['"image"', "decompression bomb"]),
    "image a number": ({"image": 5}, 422, ['"image"', "string"]),
    "image a list with a number": ({"image": [b64(digit_png()), 5]}, 422, ['"image"']),
    "image an empty list": ({"image": []}, 422, ['"image"', "empty"]),
    "too many images": ({"image": [b64(digit_png())] * 5}, 413, ["5 images", "at most 4"]),
    "no image": ({"beam": 2}, 422, ['"image" is required']),
    "text to an image model": ({"text": "1 2 3"}, 422, ["reads images", '"image"']),
    "text and image": ({"text": "1", "image": b64(digit_png())}, 422, ['"image"']),
    "alignment of an image": ({"image": b64(digit_png()), "alignment": True}, 422,
                              ['"alignment"', "image"]),
    "replace_unk of an image": ({"image": b64(digit_png()), "replace_unk": True}, 422,
                                ['"replace_unk"', "image"]),
    "beam too large": ({"image": b64(digit_png()), "beam": 99}, 422, ['"beam"']),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_a_bad_image_request_is_a_json_4xx_naming_the_field(live, name):
    app, port = live
    body, status, words = BAD_IMAGES[name]
    calls = app.state.batcher.calls
    with error_logs() as records:
        got, answer = request(port, "POST", "/translate", body)
    assert got == status, (name, answer)
    for word in words:
        assert word in answer["error"], (name, word, answer)
    assert records == []  # refused, not failed: nothing logged as an error
    assert app.state.batcher.calls == calls  # refused before translating
    ok = request(port, "POST", "/translate", {"image": b64(digit_png()), "beam": 1})
    assert ok[0] == 200, ok  # still serving


def test_an_image_sent_to_a_text_model_is_a_422(text_live):
    status, answer = request(text_live, "POST", "/translate", {"image": b64(digit_png())})
    assert status == 422 and "reads text" in answer["error"] and '"image"' in answer["error"]
    assert request(text_live, "POST", "/translate", {"text": "a b"})[0] == 200


def test_an_image_body_may_exceed_max_body_bytes_by_one_image(translator, digits):
    """max_body_bytes is for text; an image model's body may hold one max_image_bytes image
    more, and no more than that."""
    limits = ServeLimits(**{**LIMITS.__dict__, "max_body_bytes": 1000,
                            "max_image_pixels": 10_000_000})
    with serve_in_thread(create_app(translator, limits, max_wait_ms=2.0)) as port:
        wide = png(noise(140, 140, seed=1))  # about 20 kB, far over max_body_bytes
        assert 1000 < len(wide) < 64 * 1024
        assert request(port, "POST", "/translate", {"image": b64(wide), "beam": 1})[0] == 200
        status, answer = request(port, "POST", "/translate",
                                 {"image": [b64(png(noise(300, 300, seed=k))) for k in range(2)]})
        assert status == 413 and "request body" in answer["error"]
