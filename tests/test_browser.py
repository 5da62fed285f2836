"""End to end in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) opens the page ``attendo serve`` serves, submits a sentence, sees the
translation and a drawn heatmap, and hovering a token changes the highlight.

Skips, saying what to install, where Chromium, its driver, Selenium or FastAPI are missing;
``.ci/run`` installs the browser so that CI runs it, and sets ``ATTENDO_REQUIRE_BROWSER=1``
once the browser is there: then a browser that does not start is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import serve_in_thread, train_tiny

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                 if Path(p).exists()), None) or shutil.which("chromium")
CHROMEDRIVER = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else (
    shutil.which("chromedriver"))
INSTALL = ("install the browser: apt-get install chromium chromium-driver (Debian), and "
           "pip install -e '.[test]' for selenium, fastapi and uvicorn")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason=f"no Chromium/chromedriver found; {INSTALL}"
)
webdriver = pytest.importorskip("selenium.webdriver", reason=f"no selenium; {INSTALL}")
pytest.importorskip("fastapi", reason=f"no fastapi; {INSTALL}")
uvicorn = pytest.importorskip("uvicorn", reason=f"no uvicorn; {INSTALL}")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import attendo  # noqa: E402
from attendo.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """A tiny copy-task model (trained for about a second) served by uvicorn in a thread."""
    out = tmp_path_factory.mktemp("browser") / "model"
    train_tiny(out)
    with serve_in_thread(create_app(attendo.load(out), name="toy")) as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:  # e.g. a driver that does not match the browser's version
        why = f"could not start headless Chromium ({type(e).__name__}: {e}); {INSTALL}"
        if os.environ.get("ATTENDO_REQUIRE_BROWSER") == "1":
            pytest.fail(why)  # the browser is installed (CI): not starting it is a bug
        pytest.skip(why)
    yield driver
    driver.quit()


def highlighted(driver, selector: str) -> list[str]:
    return [e.get_attribute("data-j") or e.get_attribute("data-i")
            for e in driver.find_elements(By.CSS_SELECTOR, selector)
            if "hl" in e.get_attribute("class").split()]


def test_served_page_translates_draws_and_highlights(server_url, browser):
    wait = WebDriverWait(browser, 30)
    browser.get(server_url)
    wait.until(lambda d: "toy" in d.find_element(By.ID, "model").text)  # GET /health answered
    assert not browser.find_elements(By.CSS_SELECTOR, "#heatmap .cell")
    box = browser.find_element(By.ID, "input")
    box.send_keys("a b c d")
    browser.find_element(By.ID, "beam").clear()
    browser.find_element(By.ID, "beam").send_keys("3")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "translation").text.strip())
    cells = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap .cell"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap .row-tok")
    cols = browser.find_elements(By.CSS_SELECTOR, "#heatmap .col-tok")
    assert len(cols) == 4 and len(cells) == len(rows) * len(cols)  # a b c d, every output row
    assert all(c.size["width"] > 5 and c.size["height"] > 5 for c in cells)
    assert len({c.value_of_css_property("background-color") for c in cells}) > 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#nbest li")) == 3  # n-best of beam 3
    assert highlighted(browser, ".col-tok") == []

    # hover the first output token: the source tokens it attended to light up
    ActionChains(browser).move_to_element(rows[0]).perform()
    wait.until(lambda d: highlighted(d, "#heatmap .col-tok"))
    lit = highlighted(browser, "#source .col-tok")  # the sentence line too
    assert lit and lit == highlighted(browser, "#heatmap .col-tok")
    assert "active" in rows[0].get_attribute("class")
    styled = [e.value_of_css_property("background-color")
              for e in browser.find_elements(By.CSS_SELECTOR, "#source .col-tok")]
    assert any(s not in ("rgba(0, 0, 0, 0)", "transparent") for s in styled)

    # hover a source token: the output tokens that attended to it light up instead
    ActionChains(browser).move_to_element(cols[-1]).perform()
    wait.until(lambda d: highlighted(d, "#heatmap .row-tok"))
    assert highlighted(browser, "#heatmap .col-tok") == []

    # a bad request shows the server's error instead of a translation
    browser.execute_script("arguments[0].value = arguments[1]", box, "x" * 3000)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: "characters" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """A tiny image model (digit strings, 12 steps, as tests/test_image_pipeline.py's) served
    by uvicorn in a thread: (url, translator, the digits folder)."""
    pytest.importorskip("sklearn", reason="the digits need scikit-learn: pip install "
                                          "'attendo[images]'")
    import yaml

    from attendo.cli import main

    root = tmp_path_factory.mktemp("browser-images")
    data = root / "digits"
    assert main(["data", "digits", "--out", str(data), "--sizes", "64", "8", "8"]) == 0
    raw = {"data": {"src_type": "image", "train_src": str(data / "train.tsv"),
                    "valid_src": str(data / "dev.tsv"), "image_height": 16, "tokenizer": "char"},
           "model": {"encoder": "image", "enc_layers": 3, "image_pool": 2, "enc_hidden": 32,
                     "emb_dim": 16, "dec_hidden": 32},
           "train": {"out_dir": str(root / "model"), "progress": False, "device": "cpu",
                     "batch_size": 16, "max_steps": 12, "valid_every": 6, "log_every": 6,
                     "valid_max_sents": 8}}
    (root / "digits.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(root / "digits.yaml")]) == 0
    translator = attendo.load(root / "model")
    with serve_in_thread(create_app(translator, name="digits")) as port:
        yield f"http://127.0.0.1:{port}/", translator, data


def test_served_page_of_an_image_model_uploads_and_draws_attention(image_server, browser):
    url, translator, data = image_server
    wait = WebDriverWait(browser, 30)
    browser.get(url)
    wait.until(lambda d: "digits" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "input").is_displayed()  # no text box: an upload
    upload = browser.find_element(By.ID, "image-input")
    assert upload.is_displayed()
    path = data / "images/test/000000.png"
    upload.send_keys(str(path))  # choosing the file translates it
    # the output (its symbols; a 12-step model's best may be empty) and the n-best list
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .tok"))
    canvases = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap canvas.attn-canvas"))
    (direct,) = translator.translate([str(path)], beam=5, n_best=5)  # the page's defaults
    assert browser.find_element(By.ID, "translation").text == direct.text
    nbest = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#nbest li .text")]
    assert nbest == [h.text for h in direct.nbest]
    # a panel per output symbol, the symbol under it, the picture with the attention on it
    assert len(canvases) == len(direct.tgt_tokens)
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#heatmap figcaption")]
    assert captions == list(direct.tgt_tokens)
    assert all(c.size["width"] > 20 and c.size["height"] > 20 for c in canvases)
    tinted = browser.execute_script(
        "var c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data,"
        " n = 0; for (var i = 0; i < d.length; i += 4) if (d[i] - d[i + 2] > 40) n++; return n;",
        canvases[0])
    assert tinted > 0  # the accent colour of the attention over the gray picture
    assert "1 image in" in browser.find_element(By.ID, "status").text
