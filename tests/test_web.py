"""The search page end to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
type a query and see thumbnails with scores; drop an image and see similar images."""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from clipforge.serve.app import create_app
from clipforge.serve.encoder import Encoder
from clipforge.serve.index import VectorIndex
from clipforge.serve.runner import ServerThread
from clipforge.serve.sample import build_demo
from clipforge.serve.service import ServeConfig, Service

CHROMIUM = os.environ.get("CLIPFORGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)),
                       reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("web")
    demo = build_demo(root, reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz", images=24)
    service = Service(Encoder.load(demo["model"]), VectorIndex.load(demo["index"]), ServeConfig())
    with ServerThread(create_app(service)) as running:
        running.demo = demo
        yield running


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        # Console errors include CSP violations; failed fetches are the error test's own doing.
        page.on("console", lambda msg: errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=15_000)
        yield page
        browser.close()
        assert not errors, errors  # no script errors, no CSP violations


def _hits(page) -> list[dict]:
    return page.eval_on_selector_all(".hit", """cards => cards.map(c => ({
        id: c.querySelector('.id').textContent, score: parseFloat(c.querySelector('.score').textContent),
        loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0}))""")


def _wait_for_thumbnails(page, count: int) -> None:
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('.hit img')];
                  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=count, timeout=15_000)


def test_text_query_shows_thumbnails_with_scores(page, tmp_path):
    assert "24 images indexed" in page.text_content("#info")
    page.fill("#k", "6")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    _wait_for_thumbnails(page, 6)
    hits = _hits(page)
    assert len(hits) == 6 and all(h["loaded"] for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert "6 results" in page.text_content("#status")
    shot = tmp_path / "text_query.png"
    page.screenshot(path=str(shot), full_page=True)
    _assert_nontrivial_screenshot(shot)


def test_dropped_image_finds_itself_first(page, server, tmp_path):
    image = sorted(server.demo["images"].glob("*.png"))[7]
    data = base64.b64encode(image.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([b64, name]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                             const dt = new DataTransfer();
                             dt.items.add(new File([bytes], name, {type: 'image/png'}));
                             return dt; }""", [data, image.name])
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("name => document.querySelector('#status').textContent.includes(name)",
                           arg=image.name, timeout=15_000)
    _wait_for_thumbnails(page, 6)
    hits = _hits(page)
    assert hits[0]["id"] == image.stem and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    # The file chooser gives the same result as a drop.
    other = sorted(server.demo["images"].glob("*.png"))[11]
    page.set_input_files("#file", str(other))
    page.wait_for_function("name => document.querySelector('#status').textContent.includes(name)",
                           arg=other.name, timeout=15_000)
    _wait_for_thumbnails(page, 6)
    assert _hits(page)[0]["id"] == other.stem
    # Clicking a result searches for images similar to it.
    page.click(".hit >> nth=2")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('similar to')")
    shot = tmp_path / "image_query.png"
    page.screenshot(path=str(shot), full_page=True)
    _assert_nontrivial_screenshot(shot)


def test_errors_are_shown_not_thrown(page):
    # The input's maxlength stops typing at 2000 characters (the service's limit); a script can go past it.
    page.evaluate("() => { document.querySelector('#query').value = 'y'.repeat(2500); }")
    page.press("#query", "Enter")
    page.wait_for_selector("#status.error", timeout=15_000)
    assert "2500 characters" in page.text_content("#status")


def _assert_nontrivial_screenshot(path) -> None:
    from PIL import Image, ImageStat

    image = Image.open(path).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 400
    colours = image.resize((200, 160)).getcolors(maxcolors=200 * 160)
    assert colours is not None and len(colours) > 50  # text, thumbnails and layout, not a blank page
    assert max(ImageStat.Stat(image).stddev) > 10
