"""The web page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
type a query, see results, like one, get recommendations; search by a dropped image; with a
captioner, an uploaded picture is described (its alt text) and can be asked about."""

import contextlib
import json
import os
from pathlib import Path

import httpx
import pytest

from test_index_build import shapes_index
from test_serve_caption import SCENE_PNG
from test_serve_concurrency import serve_in_thread
from visembed.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

# Skipped only on a developer machine without chromium; CI (CI=true) installs it through ./dev,
# so there a missing browser is a failure, not a silent skip.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                       reason="Debian's chromium is not installed at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def page_url(tiny_model_dir, tmp_path_factory):
    with serve_in_thread(create_app(shapes_index(tiny_model_dir, tmp_path_factory))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def fresh_page(browser, url):
    """A fresh page session (no likes yet); fails the test on any JavaScript or console error."""
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture()
def page(browser, page_url):
    with fresh_page(browser, page_url) as page:
        yield page


def result_cards(page, list_id):
    return page.locator(f"#{list_id} li.card")


def wait_for_results(page, label_start: str) -> None:
    """The status line reads "LABEL: searching…" while a request runs, "LABEL: N results" after."""
    page.wait_for_function("""(start) => {
        const status = document.getElementById('status').textContent;
        return status.startsWith(start) && status.endsWith(' results');
    }""", arg=label_start)


def test_search_like_and_recommend(page):
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    cards = result_cards(page, "results")
    cards.first.wait_for()
    assert cards.count() == 12
    first = cards.first
    caption = first.locator(".caption").inner_text()
    assert first.locator("img").get_attribute("alt") == caption
    assert first.locator(".score").inner_text().startswith("score ")
    # the thumbnail loads after the card appears: wait for the browser to finish it, then check it decoded
    page.wait_for_function("document.querySelector('#results img').complete")
    assert page.evaluate("document.querySelector('#results img').naturalWidth") > 0  # thumbnail loaded

    liked_id = first.get_attribute("data-id")
    first.locator("button.like").click()
    assert first.locator("button.like").get_attribute("aria-pressed") == "true"
    recs = result_cards(page, "recommendations")
    recs.first.wait_for()
    assert recs.count() == 12
    rec_ids = [recs.nth(i).get_attribute("data-id") for i in range(recs.count())]
    assert liked_id not in rec_ids
    assert f"because you liked “{caption}”" in recs.first.locator(".because").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-search-recommend.png"), full_page=True)

    cards.nth(1).locator("button.dislike").click()  # a dislike refines the recommendations
    page.wait_for_function("document.querySelector('#recs-help').textContent.includes('1 disliked')")
    assert cards.nth(1).get_attribute("data-id") not in [
        recs.nth(i).get_attribute("data-id") for i in range(recs.count())]


def test_chinese_query_and_more_like_this(page):
    page.fill("#q", "红色的圆形")
    page.press("#q", "Enter")
    wait_for_results(page, "“红色的圆形”")
    cards = result_cards(page, "results")
    cards.first.wait_for()
    assert cards.count() == 12
    chosen = cards.nth(2).get_attribute("data-id")
    cards.nth(2).locator("button.more").click()
    wait_for_results(page, "More like")
    assert chosen not in [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]


def test_drop_an_image_to_search_by_example(page):
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    wait_for_results(page, "“a red circle”")
    cards = result_cards(page, "results")
    target = cards.nth(3).get_attribute("data-id")
    page.fill("#q", "")
    transfer = page.evaluate_handle("""async (id) => {
        const blob = await (await fetch(`/items/${encodeURIComponent(id)}/image`)).blob();
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], "example.png", {type: "image/png"}));
        return transfer;
    }""", target)
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    wait_for_results(page, "Like the example:")
    assert page.locator("#example").is_visible()
    # no captioner here: no description, no chat (test_browser_caption has them)
    page.wait_for_function("document.body.dataset.captioner === 'off'")  # the page asked /capabilities
    assert not page.locator("#example-caption").is_visible() and not page.locator("#chat").is_visible()
    assert page.locator("#example-img").get_attribute("alt") == "your example image"
    ids = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
    assert target in ids[:3]
    assert cards.first.locator(".score").inner_text() == "score 1.000"


# ---- with a captioner ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caption_url(tiny_model_dir, tiny_captioner_dir, tmp_path_factory):
    """The same page and index, with the real tiny captioner beside them (`--captioner`)."""
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), captioner_dir=tiny_captioner_dir)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture()
def caption_page(browser, caption_url):
    with fresh_page(browser, caption_url) as page:
        page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": SCENE_PNG}])
        page.wait_for_selector("#example-caption[data-state=done]")
        yield page


def api(url, path, **form):
    """What the API itself answers about the same picture."""
    response = httpx.post(f"{url}{path}", files={"file": ("scene.png", SCENE_PNG, "image/png")}, data=form, timeout=60.0)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_uploaded_picture_is_described_and_can_be_asked_about(caption_page, caption_url):
    page = caption_page
    caption = api(caption_url, "/caption")["caption"]
    assert caption  # the tiny model's words are gibberish, but there are some
    assert page.locator("#example-img").get_attribute("alt") == caption
    assert page.locator("#example-caption").inner_text() == caption and page.locator("#example-caption").is_visible()

    chat = page.locator("#chat")
    assert chat.is_visible() and page.locator("#dialogue").get_attribute("aria-live") == "polite"
    question = page.get_by_label("Your question")  # the input is labelled
    # Playwright does not see multipart bodies holding a File: read the messages field as sent
    page.evaluate("""() => {
        window.sentDialogues = [];
        const send = window.fetch;
        window.fetch = (url, options) => {
            if (url === "/chat") window.sentDialogues.push(JSON.parse(options.body.get("messages")));
            return send(url, options);
        };
    }""")
    history = []
    for text in ("What is in the picture?", "What colour is it?"):
        question.fill(text)
        page.get_by_role("button", name="Send").click()
        history.append({"role": "user", "content": text})
        reply = page.locator("#dialogue li.assistant").nth(len(history) // 2)
        reply.wait_for()
        assert page.evaluate("window.sentDialogues.at(-1)") == history  # the whole dialogue so far
        expected = api(caption_url, "/chat", messages=json.dumps(history))["reply"]
        assert reply.locator(".text").inner_text() == (expected or "…")
        history.append({"role": "assistant", "content": expected or "…"})
    assert page.locator("#dialogue li.user .text").all_inner_texts() == ["What is in the picture?", "What colour is it?"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-caption-chat.png"), full_page=True)

    page.click("#clear-example")
    assert not chat.is_visible() and page.locator("#dialogue li").count() == 0


def test_an_empty_question_is_not_sent(caption_page):
    caption_page.get_by_role("button", name="Send").click()
    assert "Type a question" in caption_page.locator("#chat-status").inner_text()
    assert caption_page.locator("#dialogue li").count() == 0


# ---- a captioner that arrives while the page is open (as `visembed demo` serves one) ------------


def test_the_page_says_when_captions_arrive_and_switches_them_on_without_a_reload(browser, tiny_model_dir,
                                                                                tiny_captioner_dir, tmp_path_factory):
    from visembed.serve.captioner_slot import CaptionerSlot

    slot = CaptionerSlot()
    slot.progress(150, 600, 420.0, "training the captioner: step 150 of 600, about 7 min left")
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), captioner_slot=slot)
    with serve_in_thread(app) as url, fresh_page(browser, url) as page:
        page.wait_for_function("document.body.dataset.captioner === 'training'")
        notice = page.locator("#captions-status")
        assert notice.is_visible()
        assert "captions arrive in about 7 min" in notice.inner_text() and "step 150 of 600" in notice.inner_text()
        page.fill("#q", "a red circle")  # search works meanwhile
        page.press("#q", "Enter")
        wait_for_results(page, "“a red circle”")
        page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": SCENE_PNG}])
        wait_for_results(page, "Like the example")
        assert not page.locator("#example-caption").is_visible() and not page.locator("#chat").is_visible()

        slot.ready(visembed_load(tiny_captioner_dir))  # the captioner arrives: the page asks again by itself
        page.wait_for_function("document.body.dataset.captioner === 'on'", timeout=60_000)
        page.wait_for_selector("#example-caption[data-state=done]")  # the picture on show gets described
        assert page.locator("#example-caption").inner_text() == api(url, "/caption")["caption"]
        assert page.locator("#chat").is_visible() and not notice.is_visible()
        assert page.locator("#caption-tagline").is_visible()


def visembed_load(folder):
    import visembed

    return visembed.load(folder)
