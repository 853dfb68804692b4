"""The search page in a real headless browser (Debian's chromium + chromedriver), over the real model.

The server is the real one (uvicorn on a free port) over an index built with
the offline e5 model. Screenshots at desktop and phone width go to
tests/artifacts/ (not committed) so a person can look at them.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from conftest import SAMPLE_WEEK, TESTS

selenium = pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from search.indexing.build import build_index  # noqa: E402
from search.http.server import make_server  # noqa: E402

ARTIFACTS = TESTS / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

pytestmark = pytest.mark.model

WEEK4 = """# 📚 4주차

### 주제 1: Attention Is All You Need
- **발표자**: 박민수

### 리뷰 1
- **리뷰어**: 최지우

트랜스포머는 recurrence 없이 self-attention만으로 번역 품질을 끌어올렸다. multi-head attention과 positional encoding이 핵심이다.

후기
병렬화가 쉬워져서 학습 속도가 크게 빨라졌다는 점이 인상적이었다.

---

### 리뷰 2
- **리뷰어**: 김철수

attention 가중치를 시각화하면 어떤 단어를 보고 번역하는지 알 수 있어서 해석에 도움이 된다. <script>alert(1)</script> 같은 문자열도 글자 그대로 보여야 한다.

---

### 주제 2: Conformer: Convolution-augmented Transformer for Speech Recognition
- **발표자**: 최지우

### 리뷰 1
- **리뷰어**: 이영희

음성인식에서 convolution으로 지역적인 특징을, self-attention으로 전역적인 문맥을 함께 잡는다. LibriSpeech에서 WER을 크게 낮췄다.

---
"""


@pytest.fixture(scope="module")
def page_index(e5_encoder, tmp_path_factory) -> Path:
    notes = tmp_path_factory.mktemp("page-notes")
    (notes / "week3.md").write_text(SAMPLE_WEEK, encoding="utf-8")
    (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
    folder = tmp_path_factory.mktemp("page") / "index"
    build_index([notes], folder, e5_encoder)
    return folder


def serve(index: Path, encoder):
    srv = make_server(index, "127.0.0.1", 0, encoder=encoder, log_requests=False)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(page_index: Path, e5_encoder):
    yield from serve(page_index, e5_encoder)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=ko-KR",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    """A screenshot of the visible page into tests/artifacts/."""
    driver.save_screenshot(str(ARTIFACTS / name))


def hits(driver) -> list[dict]:
    return [
        {
            "paper": card.find_element(By.CSS_SELECTOR, ".paper").text,
            "reviewer": card.find_element(By.CSS_SELECTOR, ".reviewer").text,
            "where": card.find_element(By.CSS_SELECTOR, ".where a").text,
            "marks": [m.text for m in card.find_elements(By.CSS_SELECTOR, "mark")],
        }
        for card in driver.find_elements(By.CSS_SELECTOR, "article.hit")
    ]


def no_horizontal_scroll(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_search_related_filter_and_phone_width(browser, base_url):
    driver = browser
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.get(base_url + "/")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ko"
    box = driver.find_element(By.NAME, "q")
    query = "잡음 많은 환경에서 음성인식 모델의 hallucination 문제"
    box.send_keys(query)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article.hit"))
    found = hits(driver)
    assert found[0]["paper"].startswith("Whisper") and found[0]["reviewer"] == "이영희"
    assert found[0]["where"].startswith("week3.md:")
    # the query's terms are marked in the passage
    assert found[0]["marks"] and all(m.lower() in query.lower() for m in found[0]["marks"])
    assert no_horizontal_scroll(driver)
    shot(driver, "search-desktop.png")

    # the related link of the first result lists other papers' reviews
    driver.find_element(By.CSS_SELECTOR, "article.hit a.related").click()
    WebDriverWait(driver, 20).until(lambda d: urlsplit(d.current_url).path == "/related")
    assert "Whisper" in driver.find_element(By.CSS_SELECTOR, "h1").text
    related = hits(driver)
    assert related and not any(h["paper"].startswith("Whisper") for h in related)
    assert related[0]["paper"].startswith("Conformer")  # the other speech paper is the closest
    # text from the notes is shown as text, never run as markup
    assert "<script>alert(1)</script>" in driver.find_element(By.TAG_NAME, "main").text
    shot(driver, "related-desktop.png")

    # a reviewer filter re-runs the search (the select submits the form on change)
    driver.back()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article.hit"))
    Select(driver.find_element(By.NAME, "reviewer")).select_by_visible_text("김철수")
    WebDriverWait(driver, 20).until(lambda d: "reviewer=" in d.current_url)
    assert parse_qs(urlsplit(driver.current_url).query)["reviewer"] == ["김철수"]
    filtered = hits(driver)
    assert filtered and {h["reviewer"] for h in filtered} == {"김철수"}
    assert Select(driver.find_element(By.NAME, "reviewer")).first_selected_option.text == "김철수"

    # the whole review behind a result
    driver.find_element(By.CSS_SELECTOR, "article.hit a.paper").click()
    WebDriverWait(driver, 20).until(lambda d: urlsplit(d.current_url).path == "/passage")
    review = driver.find_element(By.CSS_SELECTOR, "article.review").text
    assert "김철수" in driver.find_element(By.CSS_SELECTOR, ".meta .reviewer").text and review

    # phone width: nothing wider than the screen, filters still reachable
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        driver.get(base_url + "/?" + urlencode({"q": "self-attention으로 문맥을 잡는 방법"}))
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article.hit"))
        assert driver.execute_script("return window.innerWidth") == 390
        assert no_horizontal_scroll(driver)
        assert driver.find_element(By.NAME, "week").is_displayed()
        # every score and label on one line (the score had wrapped mid-number: 0. / 84 / 8)
        lines = driver.execute_script("""
            return [...document.querySelectorAll('.score, .meta dt')].map(e => {
                const style = getComputedStyle(e), size = parseFloat(style.fontSize);
                const line = parseFloat(style.lineHeight) || size * 1.4;
                return e.getBoundingClientRect().height / line; });""")
        assert lines and max(lines) < 1.5, lines
        shot(driver, "search-phone.png")
        driver.get(base_url + "/papers")
        assert no_horizontal_scroll(driver)
        shot(driver, "papers-phone.png")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_papers_page_links(browser, base_url):
    driver = browser
    driver.get(base_url + "/papers")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.papers tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".title").text for r in rows] == [
        "Whisper: Robust Speech Recognition via Large-Scale Weak Supervision",
        "LoRA: Low-Rank Adaptation of Large Language Models",
        "Attention Is All You Need",
        "Conformer: Convolution-augmented Transformer for Speech Recognition",
    ]
    shot(driver, "papers-desktop.png")
    rows[2].find_element(By.CSS_SELECTOR, "a.related").click()
    WebDriverWait(driver, 20).until(lambda d: urlsplit(d.current_url).path == "/related")
    assert "Attention Is All You Need" in driver.find_element(By.CSS_SELECTOR, "h1").text
    assert hits(driver)


def test_errors_are_pages_for_the_browser(browser, base_url):
    driver = browser
    driver.get(base_url + "/?" + urlencode({"q": "x", "week": "99999999999999999999"}))
    assert "week takes" in driver.find_element(By.CSS_SELECTOR, ".notice.error").text
    assert driver.find_element(By.NAME, "q").get_attribute("value") == "x"  # the form keeps what was typed
    driver.get(base_url + "/passage?file=nowhere.md&line=3")
    assert "no indexed review" in driver.find_element(By.CSS_SELECTOR, ".notice.error").text


def test_a_long_query_does_not_hold_up_a_short_one(base_url):
    """Issue #10: a short query answers in < 100 ms while a long one (the longest a query may be) runs.

    On a loaded machine the short query shares the CPU with the long one's
    embedding; it must still not wait for it, so the bound grows with what a
    short query costs on its own right now.
    """
    import statistics
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def get(q: str) -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(base_url + "/search?" + urlencode({"q": q}), timeout=60) as r:
            r.read()
        return time.perf_counter() - started

    alone = statistics.median(get("음성인식 잡음") for _ in range(3))
    with ThreadPoolExecutor(max_workers=1) as pool:
        long = pool.submit(get, "음성인식" * 250)
        time.sleep(0.3)
        short = get("음성인식 잡음")
        long_seconds = long.result()
    print(f"long query {long_seconds * 1000:.0f} ms; short query {alone * 1000:.0f} ms alone, "
          f"{short * 1000:.0f} ms during the long one")
    assert long_seconds > max(0.3, 3 * alone), "the long query was too quick to measure anything"
    assert short < max(0.1, 3 * alone)
