"""`medqwen serve` in a real browser: a tiny model trained and saved by `medqwen train`, the server
started as a subprocess on a free local port, headless Chromium (Debian's, driven by Playwright for
Python) uploading images, asking, reading the answers, and checking the errors shown on the page.

Skipped, not failed, only when no browser can be launched. Set MEDQWEN_SERVE_SCREENSHOT=PATH to also
save the screenshot there (docs/serve_screenshot.png was made that way).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from medqwen.cli import main

pytest.importorskip("gradio")
pydicom = pytest.importorskip("pydicom")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
EXPERIMENT = """
model: tiny-mini
seed: 0
output_dir: {out}
max_new_tokens: 4
stages:
  - name: stage1_alignment
    trainable: [projector]
    data: [{data}]
    lr: 1.0e-2
    max_steps: 30
    batch_size: 2
  - name: stage3_sslora
    trainable: [adapter]
    adapter: {{kind: sslora, r: 8, num_experts: 4, top_k: 2, target_modules: llama}}
    data: [{data}]
    lr: 1.0e-2
    max_steps: 30
    batch_size: 2
eval: []
"""


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser: the Python package playwright is not installed (pip install playwright)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no browser: Chromium is not installed (apt-get install -y chromium)")
    manager = sync_playwright().start()
    try:
        browser = manager.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    except Exception as err:  # a browser that cannot start here
        manager.stop()
        pytest.skip(f"no browser: {executable} could not be launched ({type(err).__name__}: {str(err)[:200]})")
    yield browser
    browser.close()
    manager.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`medqwen serve` on a tiny model made by `medqwen train`; yields (url, model dir, examples dir)."""
    root = tmp_path_factory.mktemp("serve")
    data = f"{{format: synthetic, path: '{root / 'syn'}', split: train, options: {{n_images: 6}}}}"
    (root / "experiment.yaml").write_text(EXPERIMENT.format(out=root / "run", data=data))
    main(["train", str(root / "experiment.yaml")])
    final = root / "run" / "final"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(root / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "medqwen.cli", "serve", "--model-dir", str(final), "--port", str(port),
         "--examples-dir", str(root / "examples"), "--max-new-tokens", "4"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"medqwen serve exited with {process.returncode}:\n{(root / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"medqwen serve did not answer on {url}:\n{(root / 'serve.log').read_text()}")
            time.sleep(0.5)
        yield url, final, root / "examples"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _status_contains(page, text: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "t => { const s = document.querySelector('#status'); return s && s.innerText.includes(t); }",
        arg=text, timeout=timeout)
    return page.inner_text("#status")


def _upload(page, path) -> None:
    page.set_input_files("#image-file input[type=file]", str(path))


def _clear_upload(page) -> None:
    clear = page.locator("#image-file button[aria-label='Clear']")
    if clear.count():
        clear.first.click()


def test_ask_in_a_real_browser(browser, server, tmp_path):
    url, final, examples = server
    from medqwen.serve import Answerer

    answerer = Answerer.from_dir(final, max_new_tokens=4)  # what the page must show
    image = examples / "synthetic" / "images"
    first = sorted(image.glob("*.png"))[0]
    question = "Is there a lesion in this image?"
    expected = answerer.ask(answerer.load_image(first), question)

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#ask")
    assert "50,000,000 pixels" in page.inner_text("body")  # the stated limit

    # a PNG, a question, the answer and the blank-image answer
    _upload(page, first)
    _status_contains(page, "Image 224 x 224")
    page.fill("#question textarea", question)
    page.click("#ask")
    status = _status_contains(page, "Answered in")
    answer, blank = page.input_value("#answer textarea"), page.input_value("#blank-answer textarea")
    assert (answer, blank) == (expected.answer, expected.blank_answer)
    assert ("Same answer with the image blanked" in status) == (answer == blank)
    page.wait_for_selector("#routing img")
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    if os.environ.get("MEDQWEN_SERVE_SCREENSHOT"):
        shutil.copy(tmp_path / "serve.png", os.environ["MEDQWEN_SERVE_SCREENSHOT"])

    # a DICOM file of pydicom's test data: windowing facts on the page, then an answer
    from pydicom.data import get_testdata_file

    _clear_upload(page)
    _upload(page, get_testdata_file("CT_small.dcm", download=False))
    status = _status_contains(page, "DICOM MONOCHROME2")
    assert "rescale slope 1, intercept -1024" in status and "percentile" in status
    page.click("#ask")
    _status_contains(page, "Answered in")

    # errors on the page, never a stack trace
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    _clear_upload(page)
    _upload(page, text)
    status = _status_contains(page, "Error")
    assert "notes.txt: not an image file" in status and "Traceback" not in status

    big = tmp_path / "huge.png"
    Image.new("1", (8000, 7000)).save(big)  # 56 megapixels in a few kB
    _clear_upload(page)
    _upload(page, big)
    status = _status_contains(page, "more than the limit")
    assert "huge.png: image is 8000 x 7000 = 56,000,000 pixels, more than the limit of 50,000,000 pixels" in status

    _clear_upload(page)
    _upload(page, first)
    _status_contains(page, "Image 224 x 224")
    page.fill("#question textarea", "   ")
    page.click("#ask")
    assert "Please type a question" in _status_contains(page, "Error")

    # one click on an example fills the file and the question
    page.get_by_text("CT as DICOM:", exact=False).first.click()
    page.wait_for_function("document.querySelector('#question textarea').value.trim().length > 0")
    assert page.input_value("#question textarea").endswith("?")
    _status_contains(page, "DICOM MONOCHROME2")  # the example's file is in
    page.click("#ask")
    status = _status_contains(page, "Answered in")
    assert "window center 127.5 / width 256 (file)" in status
    page.close()
