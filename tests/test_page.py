"""The web page in a real browser: headless Chromium (Playwright) against a running server on the tiny model.

Chromium comes from ``tests/install-browser`` (the README's test command runs it). If no browser can be
started the test fails and says why: it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from engine.builds import build_gradient_index
from engine.pipeline import local_engine
from interpret.config import EvaluationConfig, GradientIndexConfig, LissaConfig, QueryConfig
from service.app import create_app
from service.core import InfluenceService
from service.settings import Settings
from tests.cluster import free_port
from tests.conftest import save_plain

pytestmark = pytest.mark.slow  # a browser and a real server

SENTENCE = "the plot was good and fun"
SALIENCY = ["simple_gradient", "integrated_gradients", "smooth_gradient", "leave_one_out", "lime"]
SCREENSHOTS = os.environ.get("INFLUENCE_UI_SCREENSHOTS")
"""Where to keep a screenshot of each view (the README's come from ``benchmarks/results/ui``)."""


def chromium_path() -> str | None:
    """A system Chromium (``INFLUENCE_CHROMIUM``, or on the PATH); ``None``: Playwright's own."""
    named = os.environ.get("INFLUENCE_CHROMIUM")
    if named:
        return named
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(candidate):
            return found
    return None


@contextlib.contextmanager
def _serving(settings: Settings, engine):
    """uvicorn in a thread; yields its URL."""
    import uvicorn

    service = InfluenceService(settings, engine)
    port = free_port()
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)
        service.shutdown()


@pytest.fixture(scope="module")
def server(engine_dirs, tmp_path_factory):
    """The tiny model with both indexes."""
    gradient_dir = tmp_path_factory.mktemp("page") / "gradient-index"
    build_gradient_index(local_engine(engine_dirs[0]), gradient_dir, GradientIndexConfig(rank=4, damping=0.1))
    settings = Settings(
        _env_file=None,
        model_dir=engine_dirs[0],
        index_dir=engine_dirs[1],
        gradient_index_dir=gradient_dir,
        max_input_tokens=16,
        max_top=20,
        max_k=96,
        allow_full_scan=True,  # the page offers a full scan only where the operator allows one
        deadline_s=120,
    )
    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1], gradient_index_dir=gradient_dir)
    with _serving(settings, engine) as url:
        yield url


@pytest.fixture(scope="module")
def bare_server(tiny_dir, tmp_path_factory):
    """A folder as another trainer leaves it (no card), with label names, served without training data."""
    folder = save_plain(tiny_dir, tmp_path_factory.mktemp("bare") / "their-model")
    settings = Settings(_env_file=None, model_dir=folder, index_dir=None, gradient_index_dir=None)
    with _serving(settings, local_engine(folder)) as url:
        yield url


DECODER_LABELS = ["grim", "glad <b>now</b>"]  # a name with markup: the page shows it as text


@pytest.fixture(scope="module")
def decoder_server(tmp_path_factory):
    """A tiny GPT-2 classifier (byte-level BPE pieces) saved as any trainer leaves it, with label names
    (one of them holding markup), served without training data."""
    from interpret.models import set_label_names
    from interpret.training import keep_label_names
    from tests.families import family_classifier

    folder = tmp_path_factory.mktemp("decoder") / "their-gpt2"
    model, tokenizer = family_classifier("gpt2", dtype=torch.float32)
    set_label_names(model.config, DECODER_LABELS)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    keep_label_names(folder, model.config)
    settings = Settings(_env_file=None, model_dir=folder, index_dir=None, gradient_index_dir=None)
    with _serving(settings, local_engine(folder)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        except Error as error:
            pytest.fail(f"no browser could be started ({error}); run `bash tests/install-browser`")
        yield launched
        launched.close()


def _console_error(page, message) -> None:
    """Console errors, less the browser's own line for a 4xx the page shows the user (the error test)."""
    if message.type == "error" and not ("status of 422" in message.text or "status of 429" in message.text):
        page.errors.append(message.text)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: _console_error(page, message))
    page.set_default_timeout(int(os.environ.get("PAGE_TIMEOUT_MS", "60000")))
    yield page
    context.close()
    assert page.errors == []  # no script error or failed resource on any view


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")  # the model's settings and the forms are loaded


def _shoot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_prediction_and_every_saliency_method(page, server):
    _open(page, server)
    page.fill("#text", SENTENCE)
    page.click("#run")
    page.wait_for_selector("#prediction-bars .bar")
    assert page.locator("#prediction-bars .bar").count() == 2
    for method in SALIENCY:
        page.click(f'#saliency-methods [data-method="{method}"]')
        page.locator("#saliency-out").evaluate("node => node.innerHTML = ''")
        page.click("#saliency-form button[type=submit]")
        page.wait_for_selector("#saliency-out .tok")
        answer = httpx.post(
            f"{server}/v1/saliency", json={"text": SENTENCE, "method": method}, timeout=60
        ).json()
        cells = page.locator("#saliency-out .tok")
        assert cells.count() == len(answer["tokens"])  # one coloured cell per word-piece
        shown = [float(cells.nth(i).get_attribute("data-score")) for i in range(cells.count())]
        assert shown == pytest.approx(answer["raw_scores"], rel=1e-6, abs=1e-9)
        assert cells.nth(1).get_attribute("title").startswith(answer["tokens"][1])  # hover: the exact score
        if method == "integrated_gradients":
            assert "completeness gap" in page.inner_text("#saliency-out")
            baseline = page.locator("#saliency-form select[name=baseline]")  # a choice, from the schema
            assert baseline.input_value() == "auto"
            assert baseline.locator("option").all_inner_texts() == ["auto", "zero", "mask"]
            baseline.select_option("mask")
            page.locator("#saliency-out").evaluate("node => node.innerHTML = ''")
            page.click("#saliency-form button[type=submit]")
            page.wait_for_selector("#saliency-out .tok")
            assert "mask baseline" in page.inner_text("#saliency-out")
    _shoot(page, "saliency")
    assert "view=saliency" in page.url and "method=lime" in page.url  # a deep link to what is shown


def test_attack_shows_the_edits(page, server):
    _open(page, f"{server}/?view=attack&method=hotflip&text={SENTENCE.replace(' ', '+')}")
    page.wait_for_selector("#attack-out table")  # the deep link runs the view
    answer = httpx.post(
        f"{server}/v1/attack", json={"text": SENTENCE, "method": "hotflip"}, timeout=60
    ).json()
    edited = sum(1 for edit in answer["edits"] if edit["after"] is not None)
    assert page.locator("#attack-out ins.edit").count() == edited and edited > 0
    assert str(answer["outputs_before"]["label"]) in page.inner_text("#attack-out")
    _shoot(page, "attack")


def _lissa_knobs(page, depth: str, repetitions: str | None = None) -> None:
    """Open "Advanced" and set LiSSA for the tiny model (damping 0.1, scale 20)."""
    page.click("details summary")
    page.fill("#inf-depth", depth)
    if repetitions is not None:
        page.fill("#inf-reps", repetitions)
    page.fill("#inf-damping", "0.1")
    page.fill("#inf-scale", "20")


def test_influence_lists_quality_and_a_training_examples_saliency(page, server):
    _open(page, f"{server}/?view=influence")
    # Every default and bound of the influence and map forms is the server's (schema and limits), none the
    # page's own: k's default (1,000) capped at this server's max_k (96), the map's top the server's 5.
    limits = httpx.get(f"{server}/v1/models").json()["models"][0]["parameter_limits"]
    lissa = LissaConfig()
    expected = {
        "#inf-k": (str(min(QueryConfig().k, limits["k"])), str(limits["k"])),
        "#inf-top": (str(QueryConfig().top), str(limits["top"])),
        "#inf-depth": (str(lissa.recursion_depth), str(limits["recursion_depth"])),
        "#inf-reps": (str(lissa.num_repetitions), str(limits["num_repetitions"])),
        "#inf-damping": (f"{lissa.damping:g}", "1000000"),
        "#map-top": (str(EvaluationConfig().top), "100"),  # a job's top: the schema's own bound
    }
    for selector, (value, maximum) in expected.items():
        field = page.locator(selector)
        assert (field.input_value(), field.get_attribute("max")) == (value, maximum), selector
    page.fill("#text", SENTENCE)
    page.select_option("#inf-method", "fastif")
    page.fill("#inf-top", "4")
    page.fill("#inf-k", "40")
    _lissa_knobs(page, depth="20")
    page.click("#influence-form button[type=submit]")
    page.wait_for_selector("#helpful table, #helpful p")
    page.wait_for_selector("#harmful table, #harmful p")
    assert "fastif" in page.inner_text("#influence-quality")
    assert page.locator("#influence-quality svg polyline").count() == 1  # the LiSSA norm trace
    rows = page.locator("#helpful .example").count() + page.locator("#harmful .example").count()
    assert 1 <= rows <= 8
    page.locator(".example").first.click()
    page.wait_for_selector(".example-saliency .tok")
    _shoot(page, "influence")


def test_a_long_influence_query_shows_progress_and_can_be_cancelled(page, server):
    _open(page, f"{server}/?view=influence")
    page.select_option("#inf-method", "full")
    _lissa_knobs(page, depth="5000", repetitions="1")  # seconds of LiSSA on the tiny model
    page.click("#influence-form button[type=submit]")
    page.wait_for_selector("#inf-progress:not(.hidden)")
    page.click("#inf-cancel")
    page.wait_for_function("document.getElementById('error').textContent.includes('cancel')")
    assert page.locator("#inf-progress.hidden").count() == 1 and page.locator("#helpful table").count() == 0


def test_influence_map_is_drawn(page, server):
    _open(page, f"{server}/?view=map")
    page.fill("#map-texts", f"{SENTENCE}\ndull and boring")
    page.click("#map-form button[type=submit]")
    page.wait_for_selector("#map-out svg circle")
    assert page.locator("#map-out svg circle").count() >= 4 and page.locator("#map-out svg line").count() >= 2
    _shoot(page, "map")


def test_errors_show_the_servers_message_and_nothing_leaves_the_server(page, server):
    _open(page, server)
    page.fill("#text", " ".join(["good"] * 40))  # over max_input_tokens=16
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    message = page.inner_text("#error")
    assert message.startswith("422") and "INFLUENCE_MAX_INPUT_TOKENS" in message
    assert all(url.startswith(server) for url in page.requests), page.requests
    _shoot(page, "error")


def test_the_api_docs_load_with_nothing_from_outside(page, server):
    """Issue 23: /docs and /redoc loaded their scripts and fonts from a CDN (blank offline, and every
    visit told a third party). With the network cut (every request outside the server aborted), /docs
    renders the API; /redoc is gone (ReDoc's bundle fetches its logo from its CDN whatever its options)."""
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(server) else route.abort()
    )
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert page.request.get(f"{server}/redoc").status == 404
    outside = [url for url in page.requests if not url.startswith(server)]
    assert outside == [], outside


def test_the_api_key_stays_in_session_storage_and_the_page_fits_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    _open(page, server)
    page.fill("#key", "secret")
    page.dispatch_event("#key", "change")
    assert page.evaluate("sessionStorage.getItem('influence-api-key')") == "secret"
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    for tab in page.locator("#views [role=tab]").all():
        assert tab.inner_text()  # every tab is labelled
    page.focus("#tab-saliency")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-attack", "aria-selected") == "true"  # tabs work by keyboard
    context.close()


def test_a_model_without_training_data_shows_its_label_names_and_explains_the_influence_views(
    page, bare_server
):
    _open(page, bare_server)
    page.fill("#text", SENTENCE)
    page.click("#run")
    page.wait_for_selector("#prediction-bars .bar")
    bars = page.inner_text("#prediction-bars")
    assert "negative" in bars and "positive" in bars and "label 0" not in bars
    page.wait_for_selector("#saliency-out .tok")
    assert "supports negative" in page.inner_text("#saliency-out") or "supports positive" in page.inner_text(
        "#saliency-out"
    )
    assert [page.locator("#label option").nth(i).inner_text() for i in range(1, 3)] == [
        "negative",
        "positive",
    ]
    page.click("#tab-influence")
    note = page.locator("#view-influence [data-needs-training-data]")
    assert note.is_visible() and "INFLUENCE_TRAIN_DATA" in note.inner_text()
    assert page.locator("#influence-form button[type=submit]").is_disabled()
    assert "no training data" in page.inner_text("#model-name")
    _shoot(page, "bare_model")


def test_a_decoder_with_byte_level_pieces_shows_its_words_and_its_label_names(page, decoder_server):
    """Issue 38: the page on a non-BERT family: a GPT-2 classifier's byte-level BPE pieces are shown as the
    text they cover (no Ġ markers), its label names label the bars, the label choice and the saliency
    legend, and a name holding markup is shown as text, never as HTML."""
    _open(page, decoder_server)
    page.fill("#text", SENTENCE)
    page.click("#run")
    page.wait_for_selector("#prediction-bars .bar")
    bars = page.inner_text("#prediction-bars")
    assert all(name in bars for name in DECODER_LABELS) and "label 0" not in bars
    assert page.locator("#prediction-bars b").count() == 0  # the markup in a label name stayed text
    options = page.locator("#label option")
    assert [options.nth(i).inner_text() for i in range(1, 3)] == DECODER_LABELS
    page.wait_for_selector("#saliency-out .tok")
    pieces = page.locator("#saliency-out .tok:not(.special)")  # the words' pieces, not [SEP] and its kind
    shown = pieces.all_inner_texts()
    raw = [pieces.nth(i).get_attribute("data-token") for i in range(len(shown))]
    assert any(token.startswith("\u0120") for token in raw)  # byte-level BPE marks a word's start with Ġ
    assert not any("\u0120" in text for text in shown)
    assert "".join(shown).replace(" ", "") == SENTENCE.replace(" ", "")
    legend = page.inner_text("#saliency-out .legend")
    assert any(f"supports {name}" in legend for name in DECODER_LABELS)
    _shoot(page, "decoder_model")
