"""The whole flow in a real headless Chromium against a live ``ragtune serve`` (tiny models).

The tests run in file order and share one server and one browser: each step uses what the
previous one made (the store, the fine-tuned model)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import KEY_A, KEY_B, Server, screenshot

pytestmark = pytest.mark.browser

DOCS = {
    "zorbland.txt": "Zorbland was founded in 1887 by Mira Quell.\n\n"
    "The capital of Zorbland is Vetrin, a city on the river Oss.",
    "ocean.txt": "The sea is blue because water absorbs red light.\n\n"
    "Tides follow the moon; grass is green.",
}
FACT = "The capital of Zorbland is Vetrin."


def wait(driver: Any, what: Callable[[Any], Any], timeout: float = 60, message: str = "") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # pages re-render lists while they poll, so an element found may be replaced at once
    waiter = WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return waiter.until(what, message)


def texts(driver: Any, selector: str) -> list[str]:
    """The text of every match, read in one step (no stale elements)."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector
        )
    )


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def use_key(driver: Any, server: Server, key: str, page: str) -> None:
    driver.get(f"{server.url}/#{page}")
    field = css(driver, "#api-key")
    field.clear()
    field.send_keys(key)
    css(driver, "#key-form button[type=submit]").click()
    wait(driver, lambda d: css(d, "#key-state").text == "Key accepted", 30, "key not accepted")
    # the page has loaded this key's objects (so an empty list below means "none", not "not yet")
    wait(driver, lambda d: css(d, "body").get_attribute("data-ready") == page, 30, "page not ready")


def close_dialog(driver: Any) -> None:
    css(driver, "#source form button").click()
    wait(driver, lambda d: not css(d, "#source").get_attribute("open"), 10)


def test_page_is_served_without_external_resources(server: Server, browser: Any) -> None:
    browser.get(server.url + "/")
    urls = browser.execute_script(
        "return [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)"
    )
    assert urls and all(u.startswith(server.url + "/static/") for u in urls)
    assert css(browser, "#key-state").text == "Enter a valid API key"


def test_knowledge_upload_search_and_open_source(server: Server, browser: Any) -> None:
    use_key(browser, server, KEY_A, "knowledge")
    css(browser, "#store-name").send_keys("handbook")
    css(browser, "#store-create button").click()
    wait(browser, lambda d: "handbook" in css(d, "#store-select").text, 20, "store not listed")
    # drop two documents onto the drop zone, as a drag from the desktop does
    browser.execute_script(
        """const dt = new DataTransfer();
        for (const [name, text] of Object.entries(arguments[0]))
          dt.items.add(new File([text], name, {type: 'text/plain'}));
        document.querySelector('#drop').dispatchEvent(
          new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
        DOCS,
    )

    def completed(d: Any) -> bool:
        rows = texts(d, "#store-files tr")
        return len(rows) == 2 and all("completed" in r for r in rows)

    wait(browser, completed, 120, "the two documents were not ingested")
    assert {r.split()[0] for r in texts(browser, "#store-files tr")} == set(DOCS)
    css(browser, "#search-q").send_keys("capital of Zorbland")
    css(browser, "#search-form button[type=submit]").click()
    wait(browser, lambda d: all_css(d, "#search-results li"), 30, "no search results")
    first = all_css(browser, "#search-results li")[0]
    assert first.text.startswith("zorbland.txt")
    screenshot(browser, "knowledge")
    first.find_element("css selector", "button").click()
    wait(browser, lambda d: css(d, "#source-hit").text, 20, "source did not open")
    hit = css(browser, "#source-hit")
    start, end = int(hit.get_attribute("data-start")), int(hit.get_attribute("data-end"))
    assert DOCS["zorbland.txt"][start:end] == hit.text and "Vetrin" in hit.text
    assert css(browser, "#source-title").text == "zorbland.txt"
    close_dialog(browser)


def test_bad_training_file_shows_line_errors(server: Server, browser: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    bad.write_text(good + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    use_key(browser, server, KEY_A, "training")
    css(browser, "#train-file").send_keys(str(bad))
    wait(browser, lambda d: all_css(d, "#train-errors li"), 30, "no errors shown")
    errors = [li.text for li in all_css(browser, "#train-errors li")]
    assert any(e.startswith("line 2:") for e in errors), errors
    assert any(e.startswith("line 3:") for e in errors), errors
    assert "bad.jsonl was rejected" in css(browser, "#train-upload").text


def test_generate_training_data_from_a_store_shows_its_coverage(
    server: Server, browser: Any
) -> None:
    use_key(browser, server, KEY_A, "training")
    assert "handbook" in css(browser, "#gen-store").text
    css(browser, "#gen-max").clear()
    css(browser, "#gen-max").send_keys("2")
    css(browser, "#gen-para").clear()
    css(browser, "#gen-para").send_keys("0")
    css(browser, "#gen-form button[type=submit]").click()

    def ended(d: Any) -> bool:
        return css(d, "#gen-state").get_attribute("data-status") in ("succeeded", "failed")

    wait(browser, ended, 180, "the generation did not end")
    terms, values = texts(browser, "#gen-coverage dt"), texts(browser, "#gen-coverage dd")
    coverage = dict(zip(terms, values, strict=True))
    assert coverage["Documents covered"].endswith("of 2"), coverage
    counts = re.match(r"(\d+) of (\d+) generated", coverage["Pairs kept"])
    assert counts, coverage
    kept, generated = counts.groups()
    assert int(generated) > 0
    if css(browser, "#gen-state").get_attribute("data-status") == "succeeded":
        # the new training file is listed and selected for a fine-tuning job
        assert int(kept) > 0
        assert "make-qa.jsonl" in css(browser, "#job-training-file option:checked").text
    else:
        # the tiny random test model writes no checkable pair: every drop has its reason
        assert int(kept) == 0 and "make-qa kept no pairs" in css(browser, "#gen-state").text
        reasons = coverage["Dropped"]
        assert re.fullmatch(r"(\w[\w ]*: \d+)(, \w[\w ]*: \d+)*", reasons), reasons
    screenshot(browser, "training-generate")


def test_fine_tuning_job_reaches_succeeded_with_loss_curve(
    server: Server, browser: Any, tmp_path: Path
) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of Zorbland? ({i})"},
                {"role": "assistant", "content": FACT},
            ]
        }
        for i in range(10)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    css(browser, "#train-file").send_keys(str(data))
    wait(browser, lambda d: "is valid and uploaded" in css(d, "#train-upload").text, 30)
    # the auto defaults are shown; epochs set explicitly keeps the run short
    assert [css(browser, f"#hp-{h}").get_attribute("value") for h in ("epochs", "batch", "lr")] == [
        "auto",
        "auto",
        "auto",
    ]
    css(browser, "#hp-epochs").clear()
    css(browser, "#hp-epochs").send_keys("2")
    css(browser, "#job-suffix").send_keys("zorb")
    css(browser, "#job-form button[type=submit]").click()
    wait(browser, lambda d: not css(d, "#job-detail").get_attribute("hidden"), 20)
    wait(browser, lambda d: css(d, "#jd-status").text == "succeeded", 300, "job did not succeed")
    points = int(css(browser, "#loss-chart").get_attribute("data-points"))
    assert points >= 2
    assert css(browser, "#loss-chart polyline").get_attribute("points").count(",") == points
    assert css(browser, "#jd-model").text.startswith("ft:tiny_lm0:zorb:")
    assert "epochs 2" in css(browser, "#jd-hp").text
    assert "auto" not in css(browser, "#jd-hp").text  # the values auto became
    assert all_css(browser, "#jd-events li")
    # what changed per module (ragtune diff through /v1/fine_tuning/jobs/{id}/diff)
    wait(browser, lambda d: texts(d, "#jd-diff tr"), 60, "no diff shown")
    assert "module(s) changed" in css(browser, "#jd-diff-total").text
    assert any("lora" not in r and "%" in r for r in texts(browser, "#jd-diff tr"))
    screenshot(browser, "training")


def test_a_running_job_shows_its_curve_growing_and_can_be_cancelled(
    server: Server, browser: Any
) -> None:
    use_key(browser, server, KEY_A, "training")
    css(browser, "#hp-epochs").clear()
    css(browser, "#hp-epochs").send_keys("500")  # far longer than the test waits
    css(browser, "#job-form button[type=submit]").click()
    wait(browser, lambda d: css(d, "#jd-status").text == "running", 120, "job did not start")

    def points(d: Any) -> int:
        return int(css(d, "#loss-chart").get_attribute("data-points") or 0)

    wait(browser, lambda d: points(d) >= 2, 120, "no steps drawn while running")
    seen = points(browser)
    wait(browser, lambda d: points(d) > seen, 60, "the curve did not grow while running")
    assert css(browser, "#jd-eta").text not in ("", "—")  # an estimated finish while running
    css(browser, "#jd-cancel").click()
    wait(browser, lambda d: css(d, "#jd-status").text == "cancelled", 60, "job not cancelled")
    assert css(browser, "#jd-cancel").get_attribute("disabled") is not None


def test_playground_four_columns_with_a_citation(server: Server, browser: Any) -> None:
    use_key(browser, server, KEY_A, "playground")
    wait(browser, lambda d: css(d, "#play-model-ft").get_attribute("value").startswith("ft:"), 20)
    css(browser, "#play-q").send_keys("What is the capital of Zorbland?")
    css(browser, "#play-max").clear()
    css(browser, "#play-max").send_keys("12")
    css(browser, "#play-form button[type=submit]").click()

    def finished(d: Any) -> bool:
        cols = all_css(d, "#play-cols article")
        return len(cols) == 4 and all(c.get_attribute("data-done") for c in cols)

    wait(browser, finished, 180, "the four columns did not finish")
    cols = all_css(browser, "#play-cols article")
    assert [c.get_attribute("data-done") for c in cols] == ["true"] * 4, [c.text for c in cols]
    assert [c.find_element("css selector", "h3").text for c in cols] == [
        "Base",
        "RAG",
        "Fine-tuned",
        "Fine-tuned + RAG",
    ]
    models = [c.find_element("css selector", "p.muted").text for c in cols]
    assert models[0] == models[1] == "tiny_lm0"
    assert models[2].startswith("ft:") and models[3] == models[2]
    for c in cols:
        assert " s" in c.find_element("css selector", ".meta").text
        assert "completion tokens" in c.find_element("css selector", ".meta").text
    cites = cols[1].find_elements("css selector", "button.cite")
    assert cites and cols[3].find_elements("css selector", "button.cite")
    screenshot(browser, "playground")
    cites[0].click()
    wait(browser, lambda d: css(d, "#source-hit").text, 20, "citation did not open its source")
    name = css(browser, "#source-title").text
    assert name in DOCS and css(browser, "#source-hit").text in DOCS[name]
    close_dialog(browser)


QUESTIONS = [
    {"id": "q1", "question": "What is the capital of Zorbland?", "answers": ["Vetrin"],
     "doc_id": "zorbland.txt", "split": "test"},
    {"id": "q2", "question": "Why is the sea blue?", "answers": ["water absorbs red light"],
     "doc_id": "ocean.txt", "split": "test"},
]  # fmt: skip


def test_compare_runs_a_comparison_and_opens_its_report(
    server: Server, browser: Any, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    use_key(browser, server, KEY_A, "compare")
    assert "handbook" in css(browser, "#cmp-store").text  # the store made above
    css(browser, "#cmp-questions-upload").send_keys(str(questions))
    wait(browser, lambda d: "uploaded as" in css(d, "#cmp-state").text, 30, "no questions file")
    assert "questions.jsonl" in css(browser, "#cmp-questions").text
    # the smallest comparison: the two arms without training, two questions, short answers
    for arm in ("ft", "ft_rag"):
        css(browser, f"input[name=cmp_arm][value={arm}]").click()
    css(browser, "#cmp-max-questions").send_keys("2")
    css(browser, "#cmp-max-tokens").clear()
    css(browser, "#cmp-max-tokens").send_keys("4")
    css(browser, "#cmp-form button[type=submit]").click()
    wait(browser, lambda d: not css(d, "#cmp-detail").get_attribute("hidden"), 20, "no detail")
    stages = set()

    def finished(d: Any) -> bool:
        stages.add(css(d, "#cd-stage").text.split(" — ")[0])
        return css(d, "#cd-status").text in ("succeeded", "failed", "cancelled")

    wait(browser, finished, 300, "the comparison did not finish")
    assert css(browser, "#cd-status").text == "succeeded", css(browser, "#cd-error").text
    assert stages & {"preparing", "building the knowledge base", "answering: base"}, stages
    assert css(browser, "#cd-progress").get_attribute("value") == "1"
    assert "answered best" in css(browser, "#cd-verdict").text
    wait(browser, lambda d: not css(d, "#cd-report").get_attribute("hidden"), 30, "no report")
    cid = css(browser, "#cd-id").text
    assert texts(browser, f"#comparisons tr[data-comparison-id='{cid}']")
    # the report, inside the app, styled by its own CSS under the app's policy
    browser.switch_to.frame(css(browser, "#cd-report"))
    try:
        wait(browser, lambda d: all_css(d, "h1"), 20, "the report did not load")
        assert css(browser, "h1").text == "ragtune: base vs RAG vs fine-tuned"
        size = browser.execute_script(
            "return getComputedStyle(document.querySelector('h1')).fontSize"
        )
        assert size == "26px"
        assert "Verdict" in texts(browser, "h2")
    finally:
        browser.switch_to.default_content()
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "compare")


def test_phone_width(server: Server, browser: Any) -> None:
    browser.set_window_size(390, 844)
    try:
        use_key(browser, server, KEY_A, "knowledge")
        wait(browser, lambda d: all_css(d, "#store-files tr"), 20)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390  # nothing forces sideways scrolling
        screenshot(browser, "knowledge-phone")
        use_key(browser, server, KEY_A, "compare")
        wide = browser.execute_script(
            "return [...document.querySelectorAll('#page-compare *')]"
            ".filter(e => e.getBoundingClientRect().right > 390).map(e => e.tagName + '#' + e.id)"
        )
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, wide
        screenshot(browser, "compare-phone")
    finally:
        browser.set_window_size(1280, 1000)


def test_second_key_sees_none_of_the_first_keys_objects(server: Server, browser: Any) -> None:
    use_key(browser, server, KEY_A, "knowledge")  # the same page shows the first key's objects
    assert all_css(browser, "#store-select option") and all_css(browser, "#store-files tr")
    use_key(browser, server, KEY_B, "knowledge")
    assert all_css(browser, "#store-select option") == []
    assert all_css(browser, "#store-files tr") == []
    use_key(browser, server, KEY_B, "training")
    assert all_css(browser, "#jobs tr") == []
    assert all_css(browser, "#job-training-file option") == []
    assert all_css(browser, "#gen-store option") == []
    use_key(browser, server, KEY_B, "playground")
    options = [o.get_attribute("value") for o in all_css(browser, "#play-model-ft option")]
    assert options and not any(o.startswith("ft:") for o in options)
    assert all_css(browser, "#play-store option") == []
    use_key(browser, server, KEY_B, "compare")
    assert all_css(browser, "#comparisons tr") == []
    assert all_css(browser, "#cmp-store option") == [] == all_css(browser, "#cmp-questions option")
    # and the first key still has them
    assert server.api("GET", "/vector_stores", KEY_A)["data"]
