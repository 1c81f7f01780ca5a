"""The documentation site: every public name documented, a strict build, no broken link, and the
front page, an API page and a guide checked in headless Chromium.

The browser check needs Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them). Without them it is skipped, unless
``JAXNN_REQUIRE_BROWSER=1`` (set by CI) makes their absence a failure. Run it alone with
``python -m pytest tests/test_docs_site.py``.

The site is built once per session. ``JAXNN_BUILT_SITE=folder`` makes the tests check a site
already built from this checkout by ``mkdocs build --strict`` instead (``.ci/run`` builds it
first, as the README's documentation command, and points the tests at it): the build, and the
classic guide's training it runs to draw the pictures, happen once per CI run.
"""

import functools
import html.parser
import http.server
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BROWSER_PAGES = ["", "api/layers/dense/", "guides/classic/"]


def _hooks():
    spec = importlib.util.spec_from_file_location("jaxnn_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_is_in_the_api_reference_with_a_docstring_and_an_example():
    problems = _hooks().coverage_problems()
    assert not problems, "\n".join(problems)


def test_the_coverage_check_finds_an_undocumented_name(monkeypatch):
    import jaxnn.layers

    def undocumented_layer():
        return None

    # jaxnn.layers' names are listed one by one on the family pages: a new one must be added
    monkeypatch.setattr(jaxnn.layers, "undocumented_layer", undocumented_layer, raising=False)
    monkeypatch.setattr(jaxnn.layers, "__all__", [*jaxnn.layers.__all__, "undocumented_layer"])
    problems = _hooks().coverage_problems()
    assert "jaxnn.layers.undocumented_layer is public but not in the API reference" in problems
    assert "jaxnn.layers.undocumented_layer has no docstring" in problems


def test_a_bare_doctest_outside_an_examples_section_is_reported():
    hooks = _hooks()
    assert hooks._example_problems("f", "Does f.\n\n>>> f()\n")
    assert hooks._example_problems("f", "Does f.\n") == ["f's docstring has no >>> example"]
    assert hooks._example_problems("f", "Does f.\n\nExamples:\n  >>> f()\n") == []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """``mkdocs build --strict``, the README's command, into a scratch folder; or the folder
    ``JAXNN_BUILT_SITE`` names, where that command already built it."""
    built = os.environ.get("JAXNN_BUILT_SITE")
    if built:
        built_site = pathlib.Path(built)
        assert (built_site / "index.html").is_file(), (
            f"JAXNN_BUILT_SITE={built}: no site there (expected `mkdocs build --strict` output)")
        return built_site
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"the strict docs build failed:\n{result.stderr[-6000:]}"
    return out


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag in ("a", "link") and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag in ("img", "script") and attrs.get("src"):
            self.links.append(attrs["src"])


@functools.cache
def _parse(path: pathlib.Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _target(site: pathlib.Path, page: pathlib.Path, link: str):
    """The file a relative link on ``page`` points to and its fragment, or None if external."""
    parts = urllib.parse.urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:")):
        return None
    path = urllib.parse.unquote(parts.path)
    if path.startswith("/"):  # 404.html links from the site's root
        target = (site / path.lstrip("/")).resolve()
    else:
        target = page if not path else (page.parent / path).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, urllib.parse.unquote(parts.fragment)


@pytest.mark.slow  # builds the whole site (and runs the guides that draw)
def test_the_strict_build_makes_every_page_and_the_guides_pictures(site):
    for page in ["index.html", "api/index.html", "api/layers/dense/index.html",
                 "guides/classic/index.html", "guides/own-layer/index.html"]:
        assert (site / page).is_file(), page
    pictures = _hooks().front_matter((ROOT / "docs/guides/classic.md").read_text())["pictures"]
    for picture in pictures:
        assert (site / "guides" / picture).stat().st_size > 1000, picture


@pytest.mark.slow  # builds the whole site (and runs the guides that draw)
def test_no_page_of_the_site_has_a_broken_link(site):
    broken = []
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 30
    for page in pages:
        for link in _parse(page).links:
            found = _target(site, page, link)
            if found is None:
                continue
            target, fragment = found
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link} (no such file)")
            elif fragment and target.suffix == ".html" and fragment not in _parse(target).ids:
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken[:50])


@pytest.mark.slow  # builds the whole site (and runs the guides that draw)
def test_the_math_is_mathml_and_no_formula_is_left_as_tex(site):
    dense = (site / "api/layers/dense/index.html").read_text()
    assert dense.count("<math") >= 4, "the dense layer's formulas are not rendered"
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert 'class="arithmatex">\\[' not in text and 'class="arithmatex">\\(' not in text, page


# --------------------------------------------------------------------------- the real browser

def _chromium():
    required = os.environ.get("JAXNN_REQUIRE_BROWSER") == "1"
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        binary = None
    if not (binary and driver):
        message = "headless Chromium, chromedriver and selenium are needed for the browser check"
        if required:
            pytest.fail(message + " (JAXNN_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return binary, driver


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on localhost, as a browser sees a deployed one."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


MATH_LAYOUT = """
return Array.from(document.querySelectorAll('math')).map(m => {
  const box = m.getBoundingClientRect();
  return [getComputedStyle(m).display, box.width, box.height, m.getAttribute('data-tex')];
});
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", BROWSER_PAGES, ids=["front page", "api page", "guide"])
def test_the_page_loads_in_chromium_with_its_math_laid_out_and_no_console_error(
        served, browser, path):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(served + path)
    from selenium.webdriver.support.ui import WebDriverWait

    # get() returns once the load event fired; on a loaded machine give a slow one time
    WebDriverWait(browser, 60).until(
        lambda b: b.execute_script("return document.readyState") == "complete")
    assert browser.title, path
    maths = browser.execute_script(MATH_LAYOUT)
    assert maths, f"{path or 'index'}: no formula on the page"
    for display, width, height, tex in maths:
        # Chromium lays MathML out itself: a formula it did not understand would be inline text
        assert display in ("math", "block math", "inline math"), (tex, display)
        assert width > 0 and height > 0, f"{tex} has no size"
    text = browser.execute_script("return document.body.innerText")
    assert "$$" not in text and "\\frac" not in text and "\\top" not in text
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth]);")
    assert all(width for _, width in images), images
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
