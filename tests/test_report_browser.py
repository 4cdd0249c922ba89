"""The HTML report in a real browser: headless Chromium (the system's ``chromium`` and ``chromedriver``, driven
by selenium; nothing is downloaded) opens report.html and a case page from file:// addresses and checks what a
reader sees: every section and figure present and drawn at a real size, the failures written out, no console
error, a WCAG contrast of at least 4.5 for the text of every coloured cell, wide tables scrolling inside the
page instead of being cut. Screenshots of both pages are kept: under the test's tmp folder and, when
LLMRCA_ARTIFACTS names a folder, there too.

Skipped, with the reason, only where selenium, chromium or chromedriver is missing (CI installs all three).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _report_results import CRASH, SHY, tiny_results

from llmrca.report.html import write_report

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install .[test])")

CHROMIUM = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no chromium/chromedriver (apt-get install chromium chromium-driver)")

WIDTH = 1000  # narrower than the accuracy tables: they must scroll, not be cut
SECTIONS = ["families", "acc-0", "figures", "fig-avg5-0", "fig-ac1-0", "fig-blame", "fig-time", "detection",
            "heatmap", "cases", "how"]

# Every coloured cell: its text colour, its own background or, if transparent, the nearest ancestor's.
_COLOURS_JS = """
function rgba(s){const m=s.match(/[\\d.]+/g).map(Number);return m.length>3?m:[...m,1];}
function bg(el){for(;el;el=el.parentElement){const c=rgba(getComputedStyle(el).backgroundColor);
  if(c[3]>0)return c;} return [255,255,255,1];}
const out=[];
for(const el of document.querySelectorAll('td,th,td small,.legend span')){
  if(!el.textContent.trim()||el.offsetWidth===0)continue;
  const own=rgba(getComputedStyle(el.closest('td,th,span')||el).backgroundColor);
  if(own[3]===0&&el.tagName!=='SMALL')continue;
  out.push({text:el.textContent.trim().slice(0,40),fg:rgba(getComputedStyle(el).color),bg:bg(el)});}
return out;
"""


def _lum(rgb):
    def lin(c):
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(x)) for x in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(fg, bg):
    hi, lo = sorted((_lum(fg), _lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    results = tiny_results(root)
    return write_report(root / "site" / "report.html", {"study": results}, title="browser check", resamples=200)


@pytest.fixture(scope="module")
def driver():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={WIDTH},900", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _shoot(d, name: str, tmp: Path) -> list[Path]:
    """A full-page screenshot into ``tmp`` and, when LLMRCA_ARTIFACTS is set, into that folder too."""
    height = min(int(d.execute_script("return document.documentElement.scrollHeight")), 12000)
    d.set_window_size(WIDTH, height)
    shots = [tmp / name]
    d.save_screenshot(str(shots[0]))
    if os.environ.get("LLMRCA_ARTIFACTS"):
        folder = Path(os.environ["LLMRCA_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shots.append(folder / name)
        shutil.copyfile(shots[0], shots[1])
    d.set_window_size(WIDTH, 900)
    return shots


def _console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def _visible(el) -> bool:
    size = el.size
    return el.is_displayed() and size["width"] > 0 and size["height"] > 0


def test_report_in_chromium(site, driver, tmp_path):
    from selenium.webdriver.common.by import By

    driver.get(site.as_uri())
    assert driver.title == "browser check"
    for sid in SECTIONS:
        el = driver.find_element(By.ID, sid)
        assert _visible(el), sid
    figs = driver.find_elements(By.CSS_SELECTOR, "div.fig svg")
    assert len(figs) >= 4  # Avg@5 and AC@1 bars, who got blamed, accuracy against time
    for svg in figs:
        assert svg.is_displayed() and svg.size["width"] > 200 and svg.size["height"] > 100, svg.size

    # The family table: its cells are drawn (not white on white) and hold the mean, then the family's range.
    fam = driver.find_element(By.CSS_SELECTOR, "#families ~ .scroll table")
    cells = fam.find_elements(By.CSS_SELECTOR, "td[style]")
    assert cells and all(_visible(c) for c in cells)
    assert all("\n" in c.text and "–" in c.text.split("\n")[1] for c in cells), [c.text for c in cells]

    # Methods that never gave a ranking are written out, not shown as 0.00.
    fails = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "td.fail") if c.is_displayed()]
    assert "failed 4/4" in fails and "no answer 4/4" in fails, fails

    # Text contrast of every coloured cell (and of the small interval text inside one).
    pairs = driver.execute_script(_COLOURS_JS)
    assert len(pairs) > 50
    low = [(p["text"], round(_contrast(p["fg"], p["bg"]), 2)) for p in pairs if _contrast(p["fg"], p["bg"]) < 4.5]
    assert not low, low

    # The accuracy table is wider than the window: its box scrolls sideways, the page itself does not.
    box = driver.find_element(By.CSS_SELECTOR, "#acc-0 ~ .scroll")
    overflow, scroll_w, client_w, right = driver.execute_script(
        "const b=arguments[0];return [getComputedStyle(b).overflowX,b.scrollWidth,b.clientWidth,"
        "b.getBoundingClientRect().right];", box)
    assert overflow == "auto" and scroll_w > client_w and right <= WIDTH, (overflow, scroll_w, client_w, right)
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    assert not _console_errors(driver)
    shots = _shoot(driver, "report.png", tmp_path)
    assert all(p.stat().st_size > 10_000 for p in shots)

    # A case page, reached by its link in the per-case table.
    link = driver.find_element(By.CSS_SELECTOR, "table.ranks a")
    case_id = link.text
    link.click()
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Case {case_id}"
    tele = driver.find_element(By.CSS_SELECTOR, "#telemetry-figure svg")
    assert tele.is_displayed() and tele.size["height"] > 150
    rows = {r.get_attribute("data-method"): r for r in driver.find_elements(By.CSS_SELECTOR, "table.answers tr[data-method]")}
    assert set(rows) == {"dummy", "nsigma", "baro", "crashy", "shy"}
    assert "error" in rows["crashy"].text and CRASH in rows["crashy"].text
    assert "no answer" in rows["shy"].text and SHY in rows["shy"].text
    baro = rows["baro"].find_elements(By.CSS_SELECTOR, "td ol")
    assert len(baro[0].find_elements(By.TAG_NAME, "li")) == 5  # top five services
    assert len(baro[1].find_elements(By.TAG_NAME, "li")) == 5 and "(" in baro[1].text  # candidates, scores
    pairs = driver.execute_script(_COLOURS_JS)
    low = [(p["text"], round(_contrast(p["fg"], p["bg"]), 2)) for p in pairs if _contrast(p["fg"], p["bg"]) < 4.5]
    assert not low, low
    assert not _console_errors(driver)
    _shoot(driver, "case.png", tmp_path)
    driver.find_element(By.LINK_TEXT, "← report").click()
    assert driver.title == "browser check"
