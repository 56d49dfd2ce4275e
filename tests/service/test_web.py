"""The web page at `/` (service/api/ui.py, service/web/): its assets, its helper endpoints, and the page itself in a
real headless Chromium talking to a real `xraysr serve` of the shipped model, with the network blocked.

The browser tests need Debian's `chromium` and `chromium-driver` (.ci/run installs them) and skip without them.
XRAYSR_SCREENSHOT=docs/images/web_page.png makes the README's screenshot; by default it goes to a temporary folder.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests import xrays
from tests.conftest import SHARED_DATA
from xraysr.service.app import create_app
from xraysr.service.manifest import load_manifest
from xraysr.service.settings import load_settings
from xraysr.service.tools.local_server import local_server

ENGINES = Path(__file__).resolve().parents[2] / "engines"
MODEL = "cxr-default"
LR_XRAY = xrays.lr_paths()[0]  # the 64×64 of the next one
REAL_FILM = SHARED_DATA / "nih_sample" / "00000001_000.png"  # 1024×1024, as NIH released it
# The README's screenshot shows a real film where ../shared is beside the repository; elsewhere a phantom of the
# same size and format stands in (tests/xrays.py).
FULL_XRAY = REAL_FILM if REAL_FILM.is_file() else xrays.raw_path(0)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PANELS = ("input", "bicubic", "output", "difference", "uncertainty")
SEED = 1234


def _xray(path: Path) -> Path:
    assert path.is_file(), path
    return path


def _pixels(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)))


# --- the page's files and helper endpoints, without a browser ----------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(engines_dir=ENGINES, model=MODEL)), base_url="http://localhost") as client:
        yield client


def test_the_page_and_its_assets_are_served_and_name_no_other_host(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/ui/app.js", "/ui/style.css"} <= set(linked)
    # Every link stays on this server (a path) or inside the page (a fragment, a data: URL).
    assert all(link.startswith(("/", "#", "data:")) for link in linked), linked
    # app.js imports panels.js: the only other asset.
    assert re.findall(r'from "([^"]+)"', client.get("/ui/app.js").text) == ["/ui/panels.js"]
    assets = {"/": "text/html", "/ui/style.css": "text/css"} | {
        path: "text/javascript" for path in ("/ui/app.js", "/ui/panels.js")
    }
    for path, media_type in assets.items():
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert "http://" not in response.text and "https://" not in response.text, path
        assert "@import" not in response.text and "url(" not in response.text, path
    assert client.get("/ui/nothing.js").status_code == 404


def test_config_gives_the_manifests_ranges(client: TestClient) -> None:
    manifest = load_manifest(ENGINES / MODEL)
    assert client.get("/ui/config").json() == {
        "model": "cxr-default",
        "model_version": manifest.version,
        "min_steps": manifest.sampler.min_steps,
        "max_steps": manifest.sampler.max_steps,
        "default_steps": manifest.sampler.default_steps,
        "default_samples": manifest.sampler.default_samples,
        "default_answer": manifest.sampler.default_answer,
        "max_samples": 8,
        "lr_size": 64,
        "hr_size": 256,
        "auth_required": False,
        "max_body_bytes": 1 << 20,
    }


def test_inspect_returns_a_64_input_as_decoded_and_says_a_larger_one_does_not_fit(client: TestClient) -> None:
    lr_png = _xray(LR_XRAY).read_bytes()
    fits = client.post("/ui/inspect", content=lr_png, headers={"content-type": "image/png"}).json()
    assert (fits["fits"], fits["size"], fits["format"], fits["input_conversion"]) == (True, [64, 64], "png", None)
    np.testing.assert_array_equal(_pixels(base64.b64decode(fits["preview_png_base64"])), _pixels(lr_png))
    full = client.post("/ui/inspect", content=_xray(FULL_XRAY).read_bytes(), headers={"content-type": "image/png"})
    assert full.status_code == 200
    assert (full.json()["fits"], full.json()["size"]) == (False, [1024, 1024])
    broken = client.post("/ui/inspect", content=b"not an image", headers={"content-type": "image/png"})
    assert broken.status_code == 422 and "not a PNG" in broken.json()["detail"]
    # The page's calls are counted like any other endpoint's.
    counted = client.get("/metrics").text
    assert 'xraysr_requests_total{endpoint="/ui/inspect",status="200"}' in counted


def test_with_an_api_key_inspect_needs_the_token_and_config_says_so() -> None:
    settings = load_settings(engines_dir=ENGINES, model=MODEL, api_key="s3cret-key-for-the-page")
    lr_png = _xray(LR_XRAY).read_bytes()
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/ui/config").json()["auth_required"] is True
        assert client.get("/").status_code == 200  # the page itself is public: it asks for the key
        assert client.post("/ui/inspect", content=lr_png, headers={"content-type": "image/png"}).status_code == 401
        authorised = {"content-type": "image/png", "authorization": "Bearer s3cret-key-for-the-page"}
        assert client.post("/ui/inspect", content=lr_png, headers=authorised).json()["fits"] is True


# --- the page in headless Chromium -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("web") / "server.log"
    with local_server(ENGINES, MODEL, ready_timeout=120, env={"XRAYSR_THREADS": "2"}, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium with selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path below, Selenium Manager never downloads
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # The network is blocked: no name resolves except loopback, and every other request goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        viewport = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", viewport)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def _open(browser: Any, url: str) -> None:
    browser.get_log("performance")  # start the request and console logs afresh for this page
    browser.get_log("browser")
    browser.get(url)
    # The controls are enabled once the page has read /ui/config; if they never are, the console says why.
    from selenium.common.exceptions import TimeoutException

    try:
        _wait(browser, lambda: browser.execute_script("return document.getElementById('answer').disabled === false"))
    except TimeoutException:
        pytest.fail(f"the page never became ready; its console: {browser.get_log('browser')}")


def _wait(browser: Any, condition: Any, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: condition())


def _choose(browser: Any, path: Path) -> None:
    """Upload through the file input, as a user picking the file does, and wait for the answer."""
    browser.execute_script("document.getElementById('panels').dataset.state = ''")
    browser.find_element("id", "file").send_keys(str(path))
    _wait(browser, lambda: browser.find_element("id", "panels").get_attribute("data-state") in ("done", "failed"))
    error = browser.find_element("id", "error")
    assert not error.is_displayed(), error.text
    assert browser.find_element("id", "panels").get_attribute("data-state") == "done"


_CANVAS_STATS = """
const canvas = document.getElementById(arguments[0]);
const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
const grey = [];
for (let i = 0; i < data.length; i += 4) grey.push(Math.round((data[i] + data[i + 1] + data[i + 2]) / 3));
return {width: canvas.width, height: canvas.height, view: canvas.dataset.view, grey: grey};
"""


def _canvas(browser: Any, panel: str) -> dict[str, Any]:
    stats = browser.execute_script(_CANVAS_STATS, f"canvas-{panel}")
    stats["grey"] = np.array(stats["grey"], dtype=np.uint8).reshape(stats["height"], stats["width"])
    return stats


def _assert_real_image(grey: np.ndarray, panel: str) -> None:
    """Not blank, not one colour: an image with structure, as an X-ray, a difference or a spread map has."""
    assert grey.std() > 3 and len(np.unique(grey)) >= 32, (panel, grey.std(), len(np.unique(grey)))


def _assert_shows_enlarged(grey: np.ndarray, lr: np.ndarray) -> None:
    """The canvas is ``lr`` enlarged nearest-neighbour: each LR pixel's block centre holds its exact value."""
    size, lr_size = grey.shape[0], lr.shape[0]
    centres = ((np.arange(lr_size) + 0.5) * size / lr_size).astype(int)
    assert np.mean(grey[np.ix_(centres, centres)] == lr) > 0.99


def _shared_view(canvases: Any) -> tuple[float, ...]:
    """The region (x, y, side, in image fractions) every panel shows; fails unless all five show the same one."""
    views = {canvas["view"] for canvas in canvases}
    assert len(views) == 1, views
    return tuple(float(value) for value in views.pop().split(","))


def _downloaded_png(browser: Any) -> bytes:
    """What the "Output PNG" link downloads: its blob URL fetched inside the page."""
    encoded = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download-png').href).then(response => response.arrayBuffer()).then(buffer => {
          let text = ''; for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
          done(btoa(text));
        });"""
    )
    return base64.b64decode(encoded)


def _text(browser: Any, element_id: str) -> str:
    return str(browser.find_element("id", element_id).text)


def _assert_only_loopback_was_asked(browser: Any, base_url: str) -> None:
    """Every request the browser made (its DevTools log) and every resource the page loaded stayed on the server,
    and the console has no error."""
    import json

    host = urlsplit(base_url).netloc
    requested = [
        message["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    loaded = browser.execute_script("return performance.getEntries().map(entry => entry.name)")
    urls = [url for url in requested + loaded if url.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))]
    assert urls, "the browser's request log is empty"
    strays = [url for url in urls if urlsplit(url).netloc != host]
    assert not strays, strays
    # Nothing failed on the way: no script error, no refused request (a blocked one would log here too).
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def test_a_64x64_xray_fills_all_five_panels_zooms_them_together_and_downloads(browser: Any, server: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    _open(browser, server)
    Select(browser.find_element("id", "answer")).select_by_value("samples")  # the loop: steps, samples, seed
    browser.find_element("id", "steps").send_keys(Keys.HOME)  # the manifest's minimum: the fastest run
    Select(browser.find_element("id", "samples")).select_by_value("2")
    browser.find_element("id", "seed").send_keys(str(SEED))
    _choose(browser, _xray(LR_XRAY))

    assert "sent as is" in _text(browser, "notice")
    panels = {panel: _canvas(browser, panel) for panel in PANELS}
    for panel, canvas in panels.items():
        _assert_real_image(canvas["grey"], panel)
        assert canvas["view"] == "0.0000,0.0000,1.0000"
    _assert_shows_enlarged(panels["input"]["grey"], _pixels(LR_XRAY.read_bytes()))
    min_steps = load_manifest(ENGINES / MODEL).sampler.min_steps
    facts = (_text(browser, "fact-steps"), _text(browser, "fact-samples"), _text(browser, "fact-seed"))
    assert facts == (str(min_steps), "2", str(SEED))
    assert re.fullmatch(r"\d+ ms", _text(browser, "latency-total"))
    stages = _text(browser, "latency")
    assert all(stage in stages for stage in ("decode", "denoise", "vae decode")), stages
    assert re.fullmatch(r"\d+\.\d dB( — low)?", _text(browser, "fact-consistency"))
    assert "not for diagnosis" in _text(browser, "disclaimer").lower()
    # The uncertainty panel is the calibrated interval, labelled with its coverage.
    assert _text(browser, "meta-uncertainty") == "± grey levels at 90%"
    assert re.fullmatch(r"±\d+\.\d\d grey levels at 90%", _text(browser, "fact-uncertainty"))
    # Each sample can be shown in the output panel, labelled as what the model could invent; then the mean again.
    chooser = Select(browser.find_element("id", "sample-view"))
    assert [option.text for option in chooser.options] == ["mean of 2", "sample 1", "sample 2"]
    chooser.select_by_value("0")
    sample = _canvas(browser, "output")
    assert not np.array_equal(sample["grey"], panels["output"]["grey"])
    assert "could invent" in _text(browser, "meta-output")
    chooser.select_by_value("mean")
    np.testing.assert_array_equal(_canvas(browser, "output")["grey"], panels["output"]["grey"])

    # A click magnifies the clicked region 4× in all five panels at once; keys then pan and reset them together.
    output = browser.find_element("id", "canvas-output")
    ActionChains(browser).move_to_element_with_offset(output, -output.size["width"] // 4, 0).click().perform()
    zoomed = {panel: _canvas(browser, panel) for panel in PANELS}
    x, y, side = _shared_view(zoomed.values())
    # The clicked point (a quarter across, half down) is the centre of a region a quarter of the image wide.
    assert (x, y, side) == pytest.approx((0.125, 0.375, 0.25), abs=0.01)
    for panel in PANELS:
        assert not np.array_equal(zoomed[panel]["grey"], panels[panel]["grey"]), panel
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    panned = _shared_view(_canvas(browser, panel) for panel in PANELS)
    assert panned == pytest.approx((x + side / 4, y, side), abs=2e-4)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert {_canvas(browser, panel)["view"] for panel in PANELS} == {"0.0000,0.0000,1.0000"}

    # The download link's blob is the server's PNG for the same request, pixel for pixel.
    link = browser.find_element("id", "download-png")
    assert link.get_attribute("download") == f"{LR_XRAY.stem}_xraysr_seed{SEED}.png"
    downloaded = _downloaded_png(browser)
    assert downloaded.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(downloaded)).size == (256, 256)
    expected = httpx.post(
        f"{server}/upscale",
        params={"steps": min_steps, "samples": 2, "seed": SEED},
        content=LR_XRAY.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=60,
    )
    np.testing.assert_array_equal(_pixels(downloaded), _pixels(expected.content))
    _assert_only_loopback_was_asked(browser, server)


def test_a_full_size_xray_is_reduced_by_the_training_recipe_and_shown_as_sent(
    browser: Any, server: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    _open(browser, server)
    Select(browser.find_element("id", "answer")).select_by_value("samples")  # the loop: steps, samples, seed
    browser.find_element("id", "steps").send_keys(Keys.HOME)
    Select(browser.find_element("id", "samples")).select_by_value("2")
    browser.find_element("id", "seed").send_keys(str(SEED))  # the same screenshot every time
    _choose(browser, _xray(FULL_XRAY))

    notice = _text(browser, "notice")
    assert "is 1024×1024: reduced to 64×64 by the training recipe" in notice, notice
    shrunk = httpx.post(f"{server}/shrink", content=FULL_XRAY.read_bytes(), headers={"content-type": "image/png"})
    assert shrunk.status_code == 200, shrunk.text
    _assert_shows_enlarged(_canvas(browser, "input")["grey"], _pixels(shrunk.content))
    for panel in PANELS:
        _assert_real_image(_canvas(browser, panel)["grey"], panel)
    assert _text(browser, "fact-seed") == str(SEED)
    assert re.fullmatch(r"\d+ ms", _text(browser, "latency-total"))
    _assert_only_loopback_was_asked(browser, server)

    screenshot = Path(os.environ.get("XRAYSR_SCREENSHOT", tmp_path / "web_page.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("document.activeElement.blur()")  # no focus ring left on the file button
    assert browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size == (1280, 800)


def test_a_64x64_dicom_comes_back_as_a_dicom_with_the_pixels_shown(browser: Any, server: str, tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    from tests.service.dicom_files import dicom_file
    from xraysr.service.imaging import decode_image

    # 12-bit stored values, as a modality writes them: the server windows them to 8 bits, and the page shows that.
    stored = (_pixels(_xray(LR_XRAY).read_bytes()).astype(np.uint16) * 16).astype(np.uint16)
    dicom = dicom_file(stored, bits_stored=12, PatientID="WEB-0001", StudyInstanceUID=generate_uid())
    (tmp_path / "upload").mkdir()
    upload = tmp_path / "upload" / "chest.dcm"
    upload.write_bytes(dicom)
    downloads = tmp_path / "downloads"
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    _open(browser, server)
    Select(browser.find_element("id", "answer")).select_by_value("samples")  # the loop: steps, samples, seed
    browser.find_element("id", "steps").send_keys(Keys.HOME)
    browser.find_element("id", "seed").send_keys(str(SEED))
    _choose(browser, upload)
    assert "a 64×64 DICOM, sent as is" in _text(browser, "notice")
    _assert_shows_enlarged(_canvas(browser, "input")["grey"], decode_image(dicom, "application/dicom").pixels)

    button = browser.find_element("id", "download-dicom")
    assert button.is_displayed()
    button.click()
    _wait(browser, lambda: [path.name for path in downloads.glob("*.dcm")] == [f"chest_xraysr_seed{SEED}.dcm"])
    answer = dcmread(downloads / f"chest_xraysr_seed{SEED}.dcm")
    assert (answer.PatientID, answer.Rows, answer.Columns) == ("WEB-0001", 256, 256)
    png = _downloaded_png(browser)
    np.testing.assert_array_equal(answer.pixel_array, _pixels(png))  # the panels' output, as a DICOM
    _assert_only_loopback_was_asked(browser, server)


def test_on_a_server_with_an_api_key_the_page_asks_for_it_and_then_works(browser: Any, tmp_path: Path) -> None:
    key = "web-page-test-key"
    env = {"XRAYSR_THREADS": "2", "XRAYSR_API_KEY": key}
    with local_server(ENGINES, MODEL, ready_timeout=120, env=env, log=tmp_path / "server.log") as url:
        _open(browser, url)
        assert "required here" in _text(browser, "key-hint")
        browser.execute_script("document.getElementById('panels').dataset.state = ''")
        browser.find_element("id", "file").send_keys(str(_xray(LR_XRAY)))
        _wait(browser, lambda: browser.find_element("id", "panels").get_attribute("data-state") == "failed")
        assert _text(browser, "error").startswith("401 Unauthorized — this server needs an API key.")
        browser.get_log("browser")  # the refused request was logged, as it should be

        browser.find_element("id", "api-key").send_keys(key)
        _choose(browser, LR_XRAY)
        assert not browser.find_element("id", "error").is_displayed()
        # The default answer: the one-pass estimate, no noise drawn, the server's bytes for a request with no options.
        assert (_text(browser, "fact-answer"), _text(browser, "fact-steps")) == ("one-pass estimate", "1")
        assert _text(browser, "fact-seed").startswith("none")
        assert browser.find_element("id", "steps").get_attribute("disabled") is not None
        expected = httpx.post(
            f"{url}/upscale",
            content=LR_XRAY.read_bytes(),
            headers={"content-type": "image/png", "authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert browser.find_element("id", "download-png").get_attribute("download").endswith("_xraysr_estimate.png")
        np.testing.assert_array_equal(_pixels(_downloaded_png(browser)), _pixels(expected.content))
        # The key stays in the field: nothing the page can read back later holds it.
        stored = browser.execute_script(
            "return JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])"
        )
        assert key not in stored
        _assert_only_loopback_was_asked(browser, url)


def test_the_api_docs_render_offline(browser: Any, server: str) -> None:
    browser.get_log("performance")
    browser.get_log("browser")
    browser.get(f"{server}/docs")
    _wait(browser, lambda: "/upscale" in browser.execute_script("return document.body.innerText"), timeout=30)
    paths = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(element => element.innerText)"
    )
    assert "/upscale" in paths, paths
    _assert_only_loopback_was_asked(browser, server)
