"""``kb serve``'s web page in a real browser: Debian's headless Chromium driven by Selenium, against the real
``kb serve`` (real model, real index) on a loopback port.

Asked and clicked as a person would: a question typed and submitted with Enter, a citation clicked, the
highlighted lines compared with the cited lines of the file on disk; the search and status views; a
document whose text tries to script the page; a language model's answer streaming in. Screenshots of the
answer page (laptop and phone widths) are saved in the test's tmp folder.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kb.serve.http import READY
from kb.testing import Background, LlamaServer, kb_command, llama_server_missing, verify_citation

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (CI does)",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INJECTED = """# Webhook retries

Webhook deliveries are retried with exponential backoff <img src=x onerror="window.__pwned='img'"> for at most 5 attempts.
<script>window.__pwned = 'script'</script>
Webhook payloads are signed with HMAC-SHA256 [verify here](javascript:window.__pwned='link') before delivery.
![tracker](http://127.0.0.1:9/pixel.png)
"""  # noqa: E501
QUESTION = "How should we paginate the notifications API?"


def browser(profile: Path) -> Any:
    """Headless Chromium (the system's) with a fresh profile, driven through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


def start_serve(ws: Path, log: Path, env: dict[str, str] | None = None) -> tuple[Background, str]:
    proc = Background(kb_command("serve", "--workspace", ws, "--port", "0", "--no-resources"), log, env=env)
    proc.wait_for_line(READY, timeout=300)
    found = re.search(r"(http://127\.0\.0\.1:\d+)/", proc.text().split(READY, 1)[1])
    assert found, proc.text()
    return proc, found.group(1)


@pytest.fixture(scope="module")
def site(_indexed_master: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Any]]:
    """(base URL, workspace, driver): the indexed sample workspace plus an injected document, served."""
    root = tmp_path_factory.mktemp("web")
    ws = root / "ws"
    shutil.copytree(_indexed_master, ws, symlinks=True)
    (ws / "projects/prds/webhooks.md").write_text(INJECTED, encoding="utf-8")
    proc, base = start_serve(ws, root / "serve.log")
    driver = browser(root / "profile")
    try:
        yield base, ws, driver
    finally:
        driver.quit()
        code = proc.stop(signal.SIGTERM, timeout=60)
        assert code == 0, proc.text()[-2000:]


def wait(driver: Any, condition: Any, timeout: float = 120) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def ask(driver: Any, base: str, question: str, timeout: float = 120) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(base + "/")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#persona option")) > 1)
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question, Keys.ENTER)  # Enter submits
    wait(
        driver,
        lambda d: d.find_element(By.ID, "ask-state").text.startswith(("Answered", "No answer", "Error")),
    )


def test_ask_click_a_citation_and_see_the_cited_lines(site: tuple[str, Path, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, ws, driver = site
    ask(driver, base, QUESTION)
    assert driver.find_element(By.ID, "ask-state").text.startswith("Answered"), driver.page_source[-2000:]
    assert "picked by kb" in driver.find_element(By.ID, "answer-persona").text
    sentences = driver.find_elements(By.CSS_SELECTOR, "#answer-body li.cited-sentence")
    assert sentences and all(s.find_elements(By.CSS_SELECTOR, "button.cite") for s in sentences)
    driver.save_screenshot(str(tmp_path / "answer.png"))

    cite = sentences[0].find_element(By.CSS_SELECTOR, "button.cite")
    number = int(cite.get_attribute("data-id"))
    item = driver.find_element(By.CSS_SELECTOR, f"#citations li[value='{number}']")
    where = item.find_element(By.CSS_SELECTOR, "button").text
    path, start, end = re.match(r"(.+):(\d+)-(\d+)", where).groups()  # type: ignore[union-attr]
    quote = item.find_element(By.TAG_NAME, "q").text
    assert verify_citation(ws, path, int(start), int(end), quote)
    cite.click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#source-lines li.cited"))
    cited = driver.find_elements(By.CSS_SELECTOR, "#source-lines li.cited")
    file_lines = (ws / path).read_text(encoding="utf-8").splitlines()
    assert [int(li.get_attribute("data-line")) for li in cited] == list(range(int(start), int(end) + 1))
    assert [li.get_attribute("textContent") for li in cited] == file_lines[int(start) - 1 : int(end)]
    marked = " ".join(
        m.get_attribute("textContent") for m in driver.find_elements(By.CSS_SELECTOR, "#source-lines mark")
    )
    assert " ".join(marked.split()) == " ".join(quote.split()), "the quote itself is highlighted"
    assert driver.switch_to.active_element.get_attribute("id") == "source-title", "focus moves to the source"
    driver.save_screenshot(str(tmp_path / "source.png"))
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not driver.find_element(By.ID, "source-view").is_displayed()
    assert driver.switch_to.active_element.get_attribute("data-id") == str(number), "focus returns"

    driver.set_window_size(390, 844)  # a phone
    try:
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, "no sideways scrolling at phone width"
        driver.save_screenshot(str(tmp_path / "answer-phone.png"))
    finally:
        driver.set_window_size(1280, 1000)
    for name in ("answer.png", "source.png", "answer-phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_keyboard_order_search_filters_and_status(site: tuple[str, Path, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base, ws, driver = site
    driver.get(base + "/")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#persona option")) > 1)
    order = []
    for _ in range(2):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.switch_to.active_element.get_attribute("id"))
    assert order == ["persona", "ask-submit"]

    driver.find_element(By.ID, "tab-search").click()
    driver.find_element(By.ID, "search-query").send_keys("rate limits")
    Select(driver.find_element(By.ID, "search-type")).select_by_value("prd")
    driver.find_element(By.ID, "search-path").send_keys("projects/prds/*", Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "search-state").text.endswith("hit(s)."))
    paths = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#hits li > button")]
    assert paths and all(p.startswith("projects/prds/") for p in paths)

    driver.find_element(By.ID, "tab-status").click()
    wait(driver, lambda d: d.find_element(By.ID, "status-state").text.startswith("Updated"))
    summary = driver.find_element(By.ID, "status-summary").text
    assert "Sources\n8" in summary and "Last indexed" in summary
    assert "yes (pid" in driver.find_element(By.ID, "status-watcher").text
    rows = driver.find_elements(By.CSS_SELECTOR, "#resources tbody tr")
    assert rows and any("missing" in r.text or "unavailable" in r.text for r in rows)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#sources tbody tr")) == 8


def test_an_injected_document_cannot_script_the_page(site: tuple[str, Path, Any]) -> None:
    from selenium.webdriver.common.by import By

    base, ws, driver = site
    ask(driver, base, "How are webhook deliveries retried and signed?")
    body = driver.find_element(By.ID, "answer-body").get_attribute("textContent")
    # The payload reached the page, as text: its markup (kept raw, or stripped by the answer's own clean-up of
    # links and tags) and the script's words.
    assert any(p in body for p in ("<img src=x", "[verify here](javascript:", "window.__pwned")), body
    for cite in driver.find_elements(By.CSS_SELECTOR, "#answer-body button.cite"):
        cite.click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#source-lines li.cited"))
    driver.find_element(By.ID, "tab-search").click()
    driver.find_element(By.ID, "search-query").send_keys("webhook retries backoff signed")
    driver.find_element(By.ID, "search-submit").click()
    wait(driver, lambda d: d.find_element(By.ID, "search-state").text.endswith("hit(s)."))
    snippets = " ".join(
        s.get_attribute("textContent") for s in driver.find_elements(By.CSS_SELECTOR, ".snippet")
    )
    assert "<script>window.__pwned" in snippets, "the script is shown as text"
    assert driver.execute_script("return window.__pwned === undefined"), "no injected script ran"
    assert driver.find_elements(By.TAG_NAME, "img") == [] and driver.find_elements(By.TAG_NAME, "script")[0]
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 1, "only the page's own app.js"
    assert driver.find_elements(By.CSS_SELECTOR, "main a") == [], "no link from indexed text is clickable"
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(base) for u in loaded), loaded


@pytest.mark.slow
@pytest.mark.skipif(llama_server_missing() is not None, reason=str(llama_server_missing()))
def test_a_language_model_answer_streams_into_the_page(indexed: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with LlamaServer(tmp_path / "llama.log") as llm_url:
        env = {
            "KB_LLM": "openai-compatible",
            "KB_LLM_BASE_URL": llm_url,
            "KB_LLM_MAX_TOKENS": "48",
            "KB_LLM_CONTEXT_WINDOW": "1024",  # a short prompt: the tiny model reads it in seconds
        }
        proc, base = start_serve(indexed, tmp_path / "serve.log", env=env)
        driver = browser(tmp_path / "profile")
        try:
            ask(driver, base, QUESTION, timeout=600)
            timings = driver.execute_script("return window.kbTimings")
            state = driver.find_element(By.ID, "ask-state").text
            assert timings["drafts"] > 0, "the draft was shown while the model wrote it"
            assert state.startswith(("Answered", "No answer")), state
            if state.startswith("Answered"):
                assert "extractive" not in driver.find_element(By.ID, "answer-persona").text
            driver.save_screenshot(str(tmp_path / "streamed.png"))
        finally:
            driver.quit()
            assert proc.stop(signal.SIGTERM, timeout=60) == 0
