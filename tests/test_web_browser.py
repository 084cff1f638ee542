"""The page in a real browser: Debian's chromium driven by Playwright against `leukostage serve` (gunicorn).

Only 127.0.0.1 is contacted; any other request the page makes fails the test (it must work offline). Screenshots go
to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from web_server import LiveServer, launch_chromium, post, smear_candidates, watched_page

from leukostage.classes import BY_KEY, CLASS_KEYS, UNCERTAIN_COLOUR, UNCERTAIN_KEY
from leukostage.imaging import decode_image

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 20_000


def rgb_css(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture(scope="module")
def server(model_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with LiveServer(model_path, workers=1, log=ARTIFACTS / "browser-server.log") as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    """A fresh page that records console errors (CSP violations show there) and refuses non-local requests."""
    with watched_page(browser, server.url, 1000, TIMEOUT_MS) as pg:
        # Playwright turns on file-chooser interception lazily, when the first listener appears. Registered inside
        # expect_file_chooser it can race the key press, and the chooser is then lost (seen ~1 in 5 runs in CI).
        pg.on("filechooser", lambda chooser: None)
        pg.goto(server.url + "/")
        yield pg


@pytest.fixture(scope="module")
def smear_file(server, data_dir) -> Path:
    """A genuine smear the server accepts (asked over the API, so the test follows the validator's preset)."""
    for path in smear_candidates(data_dir):
        if post(server.port, "/predict", "file", [(path.name, path.read_bytes())])[0] == 200:
            return path
    pytest.fail(f"the server rejects every candidate smear under {data_dir}")


@pytest.fixture
def white_file(tmp_path) -> Path:
    path = tmp_path / "blank-white.png"
    cv2.imwrite(str(path), np.full((300, 400, 3), 255, np.uint8))
    return path


def test_smear_shows_badge_confidence_and_class_bars(page, smear_file):
    assert "not a diagnosis" in page.inner_text(".notice")
    page.set_input_files("#file-input", str(smear_file))
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_visible("#preview-image")
    assert page.is_hidden("#progress")

    badge = page.locator("#badge")
    label = badge.get_attribute("data-label")
    assert label in (*CLASS_KEYS, UNCERTAIN_KEY)
    colour = BY_KEY[label].colour if label in BY_KEY else UNCERTAIN_COLOUR
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == rgb_css(colour)
    expected_name = BY_KEY[label].display_name if label in BY_KEY else "Uncertain"
    assert badge.inner_text().strip() == expected_name
    subtype = page.inner_text("#subtype")
    assert (BY_KEY[label].dataset_label in subtype) if label in BY_KEY else "no class asserted" in subtype

    bars = page.locator(".class-bar")
    assert bars.count() == 4
    assert [bars.nth(k).get_attribute("data-key") for k in range(4)] == list(CLASS_KEYS)
    values = [float(bars.nth(k).locator(".bar-track").get_attribute("aria-valuenow")) for k in range(4)]
    assert abs(sum(values) - 100) < 0.5
    widths = [bars.nth(k).locator(".bar-fill").evaluate("el => el.getBoundingClientRect().width") for k in range(4)]
    track = bars.nth(0).locator(".bar-track").evaluate("el => el.clientWidth")
    for v, w in zip(values, widths):
        assert abs(w - track * v / 100) <= 2  # each bar is drawn at its probability
    confidence = float(page.get_attribute("#confidence-meter", "aria-valuenow"))
    assert abs(confidence - max(values)) < 0.1
    assert re.search(r"Server time \d+\.\d ms \(decode", page.inner_text("#timing"))
    assert "not a diagnosis" in page.inner_text("#result")

    page.screenshot(path=str(ARTIFACTS / "web-smear.png"), full_page=True)
    assert page.problems == []


def test_a_cell_from_another_laboratory_shows_uncertain_and_why(page, foreign_cell):
    """A real PBC lymphocyte (another laboratory): the grey Uncertain badge, no class asserted, and the note that
    the image is unlike the training images (not the low-confidence one)."""
    page.set_input_files("#file-input", str(foreign_cell))
    page.wait_for_selector("#result:not([hidden])")
    badge = page.locator("#badge")
    assert badge.get_attribute("data-label") == UNCERTAIN_KEY and badge.inner_text().strip() == "Uncertain"
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == rgb_css(UNCERTAIN_COLOUR)
    assert "no class asserted" in page.inner_text("#subtype")
    note = page.locator("#uncertain-note")
    assert note.is_visible() and note.get_attribute("data-reason") == "outside_training_domain"
    text = note.inner_text()
    assert "unlike the images the model was trained on" in text and "not confident enough" not in text
    page.screenshot(path=str(ARTIFACTS / "web-foreign-cell.png"), full_page=True)
    assert page.problems == []


def test_heat_map_switch_shows_the_gradcam_overlay(page, smear_file):
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.set_input_files("#file-input", str(smear_file))
    page.wait_for_selector("#result:not([hidden])")
    assert len(posts) == 1 and "explain" not in posts[0]  # the prediction alone: no Grad-CAM until asked for
    original, heat = page.locator("#view-original"), page.locator("#view-heatmap")
    assert page.is_visible("#view-switch")
    assert page.get_attribute("#view-switch", "role") == "group"
    assert (original.get_attribute("aria-pressed"), heat.get_attribute("aria-pressed")) == ("true", "false")
    assert page.is_visible("#preview-image") and page.is_hidden("#heatmap-image") and page.is_hidden("#heatmap-caption")

    heat.focus()
    page.keyboard.press("Enter")  # a real button: keyboard operable
    assert (original.get_attribute("aria-pressed"), heat.get_attribute("aria-pressed")) == ("false", "true")
    page.wait_for_selector("#heatmap-image", state="visible")
    assert len(posts) == 2 and "explain=1" in posts[1]  # fetched when the switch was pressed
    assert page.is_hidden("#preview-image")
    page.wait_for_function("(img => img.complete && img.naturalWidth > 0)(document.getElementById('heatmap-image'))")
    image = page.locator("#heatmap-image")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    height, width = decode_image(smear_file.read_bytes()).shape[:2]
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [width, height]  # original size
    bars = page.locator(".class-bar .bar-track")
    values = [float(bars.nth(k).get_attribute("aria-valuenow")) for k in range(4)]
    top = BY_KEY[CLASS_KEYS[values.index(max(values))]]  # the predicted class is the one explained
    caption = page.inner_text("#heatmap-caption")
    assert f"evidence for {top.display_name} lies" in caption
    assert "Grad-CAM, not a segmentation" in caption and "not diagnostic" in caption
    assert "heat map" in image.get_attribute("alt") and top.display_name in image.get_attribute("alt")
    # the colour scale beside it: visible, to the right of the image, a gradient from the server's ramp
    assert page.is_visible("#heatmap-scale") and "high" in page.inner_text("#heatmap-scale")
    scale_box, image_box = page.locator("#heatmap-scale").bounding_box(), image.bounding_box()
    assert scale_box["x"] >= image_box["x"] + image_box["width"] - 1
    gradient = page.eval_on_selector("#heatmap-scale-bar", "el => getComputedStyle(el).backgroundImage")
    assert gradient.startswith("linear-gradient") and "rgba(255, 230, 0, 0.8)" in gradient
    page.screenshot(path=str(ARTIFACTS / "web-gradcam.png"), full_page=True)

    original.focus()
    page.keyboard.press("Space")
    assert (original.get_attribute("aria-pressed"), heat.get_attribute("aria-pressed")) == ("true", "false")
    assert page.is_visible("#preview-image") and page.is_hidden("#heatmap-image") and page.is_hidden("#heatmap-caption")
    heat.click()  # the second time: shown from what the page already has, not asked for again
    page.wait_for_selector("#heatmap-image", state="visible")
    assert len(posts) == 2
    assert page.problems == []


def test_non_smear_shows_the_validators_reason(page, server, white_file):
    status, body = post(server.port, "/predict", "file", [(white_file.name, white_file.read_bytes())])
    assert status == 422
    error = body["error"]
    page.set_input_files("#file-input", str(white_file))
    page.wait_for_selector("#rejection:not([hidden])")
    assert page.is_hidden("#result")
    assert page.inner_text("#rejection-heading") == "Not a usable blood smear photograph"
    assert page.inner_text("#rejection-reason") == error["message"]
    assert error["code"] in page.inner_text("#rejection-code")
    assert page.locator("#rejection-checks tbody tr").count() == len(error["checks"])
    assert page.is_hidden("#view-switch") and page.is_hidden("#heatmap-image")  # no explanation for a rejection
    page.screenshot(path=str(ARTIFACTS / "web-non-smear.png"), full_page=True)
    assert page.problems == []


def test_unsupported_file_is_refused_with_a_reason(page, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is text, not a JPEG")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#rejection:not([hidden])")
    assert page.inner_text("#rejection-heading") == "Not a supported image"
    assert "unreadable" in page.inner_text("#rejection-code")


def test_phone_width_has_no_horizontal_scroll(browser, server, smear_file):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url + "/")
    pg.set_input_files("#file-input", str(smear_file))
    pg.wait_for_selector("#result:not([hidden])")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 360
    pg.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)
    context.close()


def test_keyboard_reaches_the_file_picker(page, smear_file):
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file-input":
            break
    else:
        pytest.fail("the file input cannot be reached with Tab")
    outline = page.evaluate("getComputedStyle(document.getElementById('drop-zone')).outlineStyle")
    assert outline == "solid"  # focus is visible on the drop zone
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(smear_file))
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "result"  # focus moves to the result for screen readers
