"""The playground page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the real
lab server: three panes side by side, token counts equal to the API's own usage for the same request, the
budget pane cut, the evaluation chart, a phone-width layout, the question kept on reload, API errors shown in
the pane, and the stop button.

Screenshots go to $L2S_PLAYGROUND_SCREENSHOTS (`make playground-screenshots` writes the README's to docs/), else
to the test's temporary directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import start_server, wait_for

from l2s.local_server import stop_server, wait_healthy

pytestmark = pytest.mark.slow

QUESTION = "What is 33+22+67+48?"
KEY = "playground-test-key"
CALIBRATION = Path(__file__).resolve().parent.parent / "results" / "lab-eval" / "calibration.json"
PANES = [("lab-long", "unlimited", None), ("lab-long", "budget", 32), ("lab-short", "unlimited", None)]
PHONE_WIDTH = 375
# Click Stop in the page itself the moment the first pane's reasoning starts to show (a click sent from the test
# would land a round trip later, when a short lab stream may already be over).
STOP_AT_FIRST_REASONING = """() => {
    const text = document.querySelector('.pane .reasoning-text');
    new MutationObserver((_, observer) => {
        if (!text.textContent) return;
        observer.disconnect();
        document.querySelector('#stop').click();
    }).observe(text, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("L2S_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("no Chromium: `make setup` installs Debian's chromium; elsewhere set L2S_CHROMIUM to one")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("L2S_PLAYGROUND_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_playground(browser, server_url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(f"{server_url}/")  # redirects to /playground/
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page


def set_panes(page, panes) -> None:
    while page.locator(".pane").count():
        page.locator(".pane .remove").first.click()
    for model, limit, budget in panes:
        page.click("#add-pane")
        pane = page.locator(".pane").last
        pane.locator(".model").select_option(model)
        pane.locator(".limit").select_option(limit)
        if budget is not None:
            pane.locator(".budget-number").fill(str(budget))


def ask(page, question: str) -> None:
    page.fill("#question", question)
    page.press("#question", "Enter")  # keyboard submit
    page.wait_for_function(
        "[...document.querySelectorAll('.pane')].every(p => !['idle', 'streaming'].includes(p.dataset.state))",
        timeout=120_000,
    )


def pane_results(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".pane",
        """panes => panes.map(p => ({
            state: p.dataset.state, cut: p.dataset.cut, servedBy: p.dataset.servedBy,
            reasoning: Number(p.dataset.reasoningTokens), answerTokens: Number(p.dataset.answerTokens),
            answer: p.querySelector('.answer').textContent, error: p.querySelector('.error').textContent,
            stats: p.querySelector('.stats').textContent}))""",
    )


def test_compare_panes_match_the_api(browser, server_url, client, screenshots):
    page = open_playground(browser, server_url)
    set_panes(page, PANES)
    ask(page, QUESTION)
    results = pane_results(page)
    assert [r["state"] for r in results] == ["done"] * 3, results
    for (model, limit, budget), result in zip(PANES, results):
        assert result["answer"].strip(), result
        assert result["servedBy"] == model
        # the same request through the official client: the page's counts are the API's usage
        extra = {"thinking_token_budget": budget} if budget is not None else {}
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, extra_body=extra
        )
        reasoning = response.usage.completion_tokens_details.reasoning_tokens
        assert result["reasoning"] == reasoning, (model, limit, result)
        assert result["answerTokens"] == response.usage.completion_tokens - reasoning, (model, limit, result)
    long_free, long_budget, short = results
    assert long_budget["cut"] == "true" and "cut the reasoning" in long_budget["stats"]
    assert long_budget["reasoning"] <= 32 < long_free["reasoning"]
    assert long_free["cut"] == "false" and short["reasoning"] < long_free["reasoning"]
    for reasoning in page.locator(".pane .reasoning summary").all():  # closed once the answer came: show it
        reasoning.click()
    page.screenshot(path=str(screenshots / "playground-compare.png"), full_page=True)

    # The evaluation view: every variant's card figures, the ones in use highlighted.
    page.click("#tab-evaluation")
    labels = page.locator("#chart text").all_text_contents()
    assert "lab-long" in labels and "lab-short" in labels
    assert page.locator("#chart circle.in-use").count() >= 2

    # A phone: the panes stack, nothing is wider than the screen.
    page.click("#tab-compare")
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    boxes = [pane.bounding_box() for pane in page.locator(".pane").all()]
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH for box in boxes)
    page.screenshot(path=str(screenshots / "playground-phone.png"), full_page=True)

    # A reload keeps the question and the panes.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#question") == QUESTION
    assert page.eval_on_selector_all(".pane .model", "s => s.map(s => s.value)") == [m for m, _, _ in PANES]
    page.close()


def test_errors_show_the_api_message_and_stop_aborts(browser, server_url):
    page = open_playground(browser, server_url)
    set_panes(page, [("lab-long", "unlimited", None), ("auto", "effort:low", None)])
    page.fill("#max-tokens", "100000")  # beyond the context: the API answers 400
    ask(page, QUESTION)
    for result in pane_results(page):
        assert result["state"] == "error"
        assert "400" in result["error"] and "maximum context length" in result["error"], result

    # Stop while the long pane streams: the pane says so, and the server saw the client leave (499), which is
    # when it aborts the generation in the engine. When the whole response arrives in one read (a busy server
    # batches its events), the stream has ended before the click lands: the long pane says "done", and the test
    # tries again.
    page.fill("#max-tokens", "")
    for _attempt in range(5):  # an attempt counts when the long pane itself was stopped mid-stream
        before = _requests(server_url, "lab-long")
        page.fill("#question", QUESTION)
        page.evaluate(STOP_AT_FIRST_REASONING)
        page.press("#question", "Enter")
        page.wait_for_function("['Stopped.', 'Done.'].includes(document.querySelector('#status').textContent)")
        if page.text_content("#status") == "Stopped." and pane_results(page)[0]["state"] == "stopped":
            break
    assert page.text_content("#status") == "Stopped."
    assert pane_results(page)[0]["state"] == "stopped"
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    wait_for(lambda: _requests(server_url, "lab-long") != before, what="the server to count the request")
    after = _requests(server_url, "lab-long")
    changed = {status: after.get(status, 0) - before.get(status, 0) for status in ("200", "499")}
    assert changed in ({"499": 1, "200": 0}, {"499": 0, "200": 1}), changed
    if changed["200"]:
        print("the stream had ended before Stop reached the server (a loaded machine)")
    page.close()


def test_api_key_and_calibration(browser, lab_models, screenshots, tmp_path):
    """A server with a key: the page asks for it and sends it; with --calibration the evaluation view draws each
    variant's measured budgets as a curve. (The two calibrated variants only: an engine less to start.)"""
    hosted = tmp_path / "models"
    hosted.mkdir()
    for name in ("lab-long", "lab-short"):
        (hosted / name).symlink_to(lab_models / name)
    process, base_url, log_path = start_server(hosted, "--api-key", KEY, "--calibration", str(CALIBRATION))
    try:
        wait_healthy(base_url, process)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base_url)
        page.wait_for_selector("#key-row:not([hidden])")
        assert "API key" in page.text_content("#status")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        set_panes(page, [("lab-long", "effort:low", None), ("auto", "budget", 0)])
        ask(page, QUESTION)
        results = pane_results(page)
        assert [r["state"] for r in results] == ["done", "done"], results
        assert results[1]["servedBy"] in ("lab-long", "lab-short") and "auto picked" in results[1]["stats"]

        page.click("#tab-evaluation")
        hosted = json.loads(CALIBRATION.read_text())["variants"]
        budgets = sum(len(hosted[name]["budgets"]) for name in ("lab-long", "lab-short"))
        assert page.locator("#chart polyline").count() == 2  # one curve per hosted variant
        assert page.locator("#chart circle").count() == budgets + 2  # its budgets, and its card's point
        page.screenshot(path=str(screenshots / "playground-evaluation.png"), full_page=True)
        page.close()
    finally:
        stop_server(process)


def _requests(server_url: str, variant: str) -> dict[str, float]:
    """The server's count of `variant` requests by status (499: the client went away)."""
    counts = {"200": 0.0, "499": 0.0}
    for row in httpx.get(f"{server_url}/metrics").text.splitlines():
        if row.startswith("l2s_requests_total{") and f'variant="{variant}"' in row:
            status = row.split('status="')[1].split('"')[0]
            counts[status] = float(row.split()[-1])
    return counts
