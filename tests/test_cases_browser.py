"""The case pages in a real browser: Debian's chromium driven by Playwright against `leukostage serve` (gunicorn) on a
throw-away instance (SQLite, migrated and given a technician, a reviewer and an admin through the CLI), with real
smears.

A technician signs in, creates a case, drops many fields at once (a progress bar each), sees the grid, the chart,
the call and the heat maps, and finds no sign-off control; a reviewer searches, relabels a field, signs off (nothing
pre-selected) and amends, and reads the amended call back; a non-diagnostic sign-off; a field opened large and
removed; an admin manages users on the Users page. Only 127.0.0.1 is contacted; console errors (CSP violations show
there) fail the test. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from web_server import LiveServer, launch_chromium, watched_page

from leukostage.classes import CLASS_KEYS, CLASSES, DISCLAIMER, NOT_EVIDENCE_LABEL, UNCERTAIN_COLOUR
from leukostage.reports import content

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 30_000
UPLOAD_TIMEOUT_MS = 120_000  # six fields analysed on a shared 2-core machine
PASSWORD = "correct horse battery 9"


def cli(env: dict, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "leukostage.cli", *args],
        env=env,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, f"leukostage {' '.join(args)}: {done.stdout[-500:]} {done.stderr[-500:]}"
    return done.stdout


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> dict:
    """A migrated SQLite instance with users ``tech`` (technician), ``rev`` (reviewer) and ``boss`` (admin), and rev's
    API token."""
    root = tmp_path_factory.mktemp("cases-browser")
    env = {
        **os.environ,
        "LEUKOSTAGE_INSTANCE": str(root / "instance"),
        "LEUKOSTAGE_STORAGE": str(root / "instance" / "images"),
        "LEUKOSTAGE_LOGIN_RATE_LIMIT": "100 per minute",  # this module signs in more than 10 times a minute
    }
    env.pop("LEUKOSTAGE_DATABASE_URL", None)
    cli(env, "db", "upgrade")
    for name, role in (("tech", "technician"), ("rev", "reviewer"), ("boss", "admin")):
        cli(env, "users", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    token = cli(env, "users", "token", "rev").strip().splitlines()[-1].split()[-1]
    return {"env": env, "token": token}


@pytest.fixture(scope="module")
def server(model_path, instance):
    ARTIFACTS.mkdir(exist_ok=True)
    with LiveServer(model_path, workers=1, env=instance["env"], log=ARTIFACTS / "cases-browser-server.log") as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no session) that records console errors and refuses non-local requests."""
    with watched_page(browser, server.url, 1200, TIMEOUT_MS, local_schemes=("blob:", "data:")) as pg:
        pg.base = server.url
        yield pg


@pytest.fixture(scope="module")
def fields(taleqani, data_dir) -> list[Path]:
    """Five real Pro-B ALL (Advanced Stage) fields of one patient run (the input check refuses one of them), and
    one histology image that it refuses too."""
    smears = sorted((taleqani / "cancerous" / "advanced").glob("*.jpg"))[:5]
    return smears + sorted((data_dir / "not_blood").glob("*"))[:1]


def rgb_css(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def sign_in(pg, username: str, next_path: str = "/cases") -> None:
    pg.goto(pg.base + next_path)
    pg.wait_for_selector("#sign-in")  # not signed in: the login page, with ?next=
    pg.fill("#username", username)
    pg.fill("#password", PASSWORD)
    pg.click("#sign-in")
    pg.wait_for_load_state()


def api_case(pg, case_id: int) -> dict:
    """The case as the API serves it, read with the page's own session."""
    response = pg.request.get(f"{pg.base}/api/v1/cases/{case_id}")
    assert response.status == 200
    return response.json()


def create_case_via_api(server_url: str, token: str, accession: str, files: list[Path]) -> int:
    """A case with fields, made the way a LIMS would (bearer token), for the reviewer's walk."""
    import http.client

    from web_server import HOST, multipart

    conn = http.client.HTTPConnection(HOST, int(server_url.rsplit(":", 1)[1]), timeout=120)
    try:
        conn.request(
            "POST",
            "/api/v1/cases",
            body=json.dumps({"accession": accession, "patient_ref": "Patient/rv-1"}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        case = json.loads(response.read())
        assert response.status == 201, case
        if not files:
            return case["id"]
        body, ctype = multipart("files", [(f.name, f.read_bytes()) for f in files])
        conn.request(
            "POST",
            f"/api/v1/cases/{case['id']}/images",
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
        )
        response = conn.getresponse()
        assert response.status == 201, response.read()[:300]
        response.read()
        return case["id"]
    finally:
        conn.close()


def test_technician_creates_a_case_drops_many_fields_and_cannot_sign_off(page, fields):
    sign_in(page, "tech")
    assert page.inner_text("#signed-in-as").split() == ["tech", "technician"]
    page.click("#new-case-link")
    page.fill("#accession", "BR-TECH-1")
    page.fill("#patient_ref", "Patient/br-1")
    page.fill("#note", "Bone-marrow follow-up smear")
    page.click("#create-case")
    page.wait_for_selector("#case-heading")
    case_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    assert page.inner_text("#accession") == "BR-TECH-1"
    assert page.get_attribute("#case-status", "data-status") == "open"
    assert page.inner_text("#no-fields").startswith("No fields yet")

    # many files at once: one row with a progress bar each, then the page shows the stored fields
    page.set_input_files("#file-input", [str(f) for f in fields])
    page.wait_for_selector(f"#field-grid .field >> nth={len(fields) - 1}", timeout=UPLOAD_TIMEOUT_MS)
    # the page reloads when every upload is done and then lists the batch again from sessionStorage: wait for that
    # script, not only for the server-rendered grid (counting in between found 0 rows in 1 of 3 clean runs)
    page.wait_for_selector(f"#upload-list li >> nth={len(fields) - 1}")
    rows = page.locator("#upload-list li")
    assert rows.count() == len(fields)
    assert page.locator("#upload-list li progress").count() == len(fields)
    assert all(v == 100 for v in page.eval_on_selector_all("#upload-list progress", "els => els.map(e => e.value)"))
    assert page.locator('#upload-list li[data-outcome="done"]').count() == len(fields)
    assert "refused" in rows.nth(len(fields) - 1).inner_text()
    assert "Last upload: 6 files, 6 stored" in page.inner_text("#upload-summary")

    # the grid, the badges, the call, the chart: what the API says
    case = api_case(page, case_id)
    assert len(case["images"]) == len(fields)
    badges = page.eval_on_selector_all("#field-grid .field .badge", "els => els.map(e => e.dataset.label)")
    assert badges == [content.shown_label(i) for i in case["images"]]
    refused_ids = [i["image_id"] for i in case["images"] if not i["result"]["valid"]]
    assert refused_ids and badges.count("refused") == len(refused_ids)
    summary = case["summary"]
    assert page.get_attribute("#model-call", "data-label") == summary["case_call"] == "advanced"
    assert page.inner_text("#case-rule") == summary["case_rule"]
    assert page.inner_text("#final-call") == "Not reviewed yet"
    shares = content.class_shares(summary)
    for key in CLASS_KEYS:
        row = page.locator(f'.chart-row[data-key="{key}"]')
        assert float(row.get_attribute("data-share")) == pytest.approx(100 * shares[key], abs=0.05)
    badge_colour = page.eval_on_selector("#model-call", "e => getComputedStyle(e).backgroundColor")
    assert badge_colour == "rgb(207, 34, 46)"  # classes.py's Advanced red, through /cases/classes.css

    # no sign-off for a technician: not on the page at all, and the API refuses it
    assert page.locator("#review-panel").count() == 0
    assert page.locator("#sign-off").count() == 0
    assert page.locator(".override-select").count() == 0
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    refused = page.request.post(
        f"{page.base}/api/v1/cases/{case_id}/review",
        headers={"X-CSRFToken": csrf},
        data={"final_call": "advanced", "comment": "x"},
    )
    assert refused.status == 403

    # Original / Heat map: the heat maps of the valid fields load; the refused field keeps its original
    page.click("#view-heatmap")
    assert page.get_attribute("#view-heatmap", "aria-pressed") == "true"
    page.wait_for_function("""() => [...document.querySelectorAll('img.heatmap')]
        .every(i => i.complete && i.naturalWidth > 0)""")
    valid = sum(bool(i["result"]["valid"]) for i in case["images"])
    assert 0 < valid < len(fields)
    assert page.locator("img.heatmap:visible").count() == valid
    for image_id in refused_ids:
        field = page.locator(f'#field-grid .field[data-image-id="{image_id}"]')
        assert field.locator("img.heatmap").count() == 0 and field.locator("img.original").is_visible()
    page.click("#view-original")
    assert page.locator("img.heatmap:visible").count() == 0

    # downloads
    pdf = page.request.get(page.base + page.get_attribute("#download-pdf", "href"))
    assert pdf.status == 200 and pdf.body().startswith(b"%PDF")
    bundle = page.request.get(page.base + page.get_attribute("#download-fhir", "href")).json()
    assert bundle["resourceType"] == "Bundle"
    csv_text = page.request.get(page.base + page.get_attribute("#download-csv", "href")).text()
    assert len(csv_text.strip().splitlines()) == len(fields) + 1

    # the audit trail: created, each field added, viewed
    page.reload()
    actions = page.eval_on_selector_all("#audit-table tbody tr", "els => els.map(e => e.dataset.action)")
    assert actions[0] == "created" and actions.count("image_added") == len(fields) and "viewed" in actions
    page.screenshot(path=str(ARTIFACTS / "cases-technician.png"), full_page=True)
    assert page.problems == []


def test_reviewer_searches_relabels_signs_off_and_amends(page, server, instance, fields):
    case_id = create_case_via_api(server.url, instance["token"], "BR-REV-2", fields)
    model_case = None
    sign_in(page, "rev")
    assert page.inner_text("#signed-in-as").split() == ["rev", "reviewer"]

    page.fill("#q", "BR-REV")
    page.click("#search-button")
    page.wait_for_selector("#case-table")
    assert page.locator("#case-table tbody tr").count() == 1
    assert page.get_attribute("#case-table tbody tr", "data-case-id") == str(case_id)
    page.fill("#q", "no-such-accession")
    page.click("#search-button")
    page.wait_for_selector("#no-cases")

    page.goto(f"{page.base}/cases/{case_id}")
    page.wait_for_selector("#review-form")
    model_case = api_case(page, case_id)
    first = model_case["images"][0]
    valid = sum(bool(i["result"]["valid"]) for i in model_case["images"])
    assert page.locator(".override-select").count() == valid  # none for refused fields
    page.select_option(f'.override-select[data-image-id="{first["image_id"]}"]', "mid")
    # nothing is pre-selected: the reviewer states the call; signing off without one does not send anything
    choices = page.eval_on_selector_all('input[name="final_call"]', "els => els.map(e => [e.value, e.checked])")
    assert [v for v, _ in choices] == ["normal", "early", "mid", "advanced", "non_diagnostic"]
    assert not any(checked for _, checked in choices)
    page.fill("#comment", "Pro-B blasts; field 1 reads as Pre-B")
    page.click("#sign-off")
    assert page.evaluate("document.getElementById('review-form').checkValidity()") is False
    assert api_case(page, case_id)["status"] == "open"
    page.check("#call-advanced")
    page.click("#sign-off")
    page.wait_for_selector("#amend")

    assert page.get_attribute("#case-status", "data-status") == "signed_off"
    assert page.get_attribute("#final-call", "data-label") == "advanced"
    assert "Pro-B blasts" in page.inner_text("#final-comment")
    assert " ".join(page.inner_text("#final-call-by").split()).startswith("signed off by rev")
    field = page.locator(f'.field[data-image-id="{first["image_id"]}"]')
    assert field.locator(".badge").get_attribute("data-label") == "mid"
    assert "model:" in field.inner_text()
    assert page.locator("#upload-panel").count() == 0  # a signed-off case takes no more fields
    after = api_case(page, case_id)
    assert after["status"] == "signed_off" and after["review"]["reviewer"] == "rev"
    assert after["images"][0]["override"]["label"] == "mid"
    assert after["images"][0]["result"] == first["result"]  # the model's own result is never overwritten

    # an amendment needs a reason: the server's refusal is shown on the form
    page.fill("#reason", "   ")
    page.click("#amend")
    page.wait_for_selector("#review-error:not([hidden])")
    assert "reason" in page.inner_text("#review-error")
    page.fill("#reason", "Second look at the smear")
    page.select_option("#final-call-select", "mid")
    page.click("#amend")
    page.wait_for_selector('#case-status[data-status="amended"]')
    # the amendment is what the case says now: its call, who, when and why; the sign-off is history below it
    assert page.get_attribute("#final-call", "data-label") == "mid"
    assert " ".join(page.inner_text("#final-call-by").split()).startswith("amended by rev")
    assert page.inner_text("#final-reason") == "Reason: Second look at the smear"
    assert page.locator("#final-comment").count() == 0  # the sign-off's comment is not the amendment's
    history = page.inner_text("#history")
    assert "signed off as Advanced Stage" in history and "Pro-B blasts" in history
    listed = page.request.get(f"{page.base}/api/v1/cases?q=BR-REV-2").json()["cases"][0]
    assert (listed["final_call"], listed["final_call_by"]) == ("mid", "rev")
    actions = page.eval_on_selector_all("#audit-table tbody tr", "els => els.map(e => e.dataset.action)")
    for action in ("overridden", "signed_off", "amended"):
        assert action in actions
    page.screenshot(path=str(ARTIFACTS / "cases-reviewer.png"), full_page=True)
    assert page.problems == []


def test_a_case_link_leads_through_the_login_and_back(page, server, instance, fields):
    case_id = create_case_via_api(server.url, instance["token"], "BR-NEXT-3", fields[:1])
    sign_in(page, "tech", next_path=f"/cases/{case_id}")
    page.wait_for_selector("#case-heading")
    assert page.url.endswith(f"/cases/{case_id}")


def test_wrong_password_and_duplicate_accession_are_explained(page):
    page.goto(page.base + "/login")
    assert " ".join(page.inner_text(".notice").split()) == DISCLAIMER  # the one disclaimer, on the login page too
    page.fill("#username", "tech")
    page.fill("#password", "not the password")
    page.click("#sign-in")
    page.wait_for_selector("#login-error")
    assert "Wrong user name or password" in page.inner_text("#login-error")

    sign_in(page, "tech")
    for _attempt in range(2):
        page.goto(page.base + "/cases/new")
        page.fill("#accession", "BR-DUP-4")
        page.click("#create-case")
        page.wait_for_load_state()
    assert "exists already" in page.inner_text("#new-error")
    assert page.input_value("#accession") == "BR-DUP-4"  # the form keeps what was typed
    forged = page.request.post(page.base + "/cases/new", form={"accession": "BR-FORGED"})  # no CSRF token
    assert forged.status == 400 and forged.json()["error"]["code"] == "csrf_failed"
    page.goto(page.base + "/cases?q=BR-FORGED")
    page.wait_for_selector("#no-cases")


def test_unknown_case_is_a_page_not_json(page):
    sign_in(page, "tech")
    response = page.goto(page.base + "/cases/999999")
    assert response.status == 404
    assert page.inner_text("#error-heading") == "Not found"


def test_case_page_fits_a_phone(browser, server, instance, fields):
    case_id = create_case_via_api(server.url, instance["token"], "BR-PHONE-5", fields[:3])
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.base = server.url
    sign_in(pg, "rev", next_path=f"/cases/{case_id}")
    pg.wait_for_selector("#review-form")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 360
    pg.screenshot(path=str(ARTIFACTS / "cases-phone.png"), full_page=True)
    context.close()


DROP_FILES = """([zone, files]) => {
    const transfer = new DataTransfer();
    for (const f of files) {
        const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
        transfer.items.add(new File([bytes], f.name, { type: "image/jpeg" }));
    }
    for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }
}"""


def test_fields_dragged_onto_the_drop_zone_are_uploaded(page, server, instance, fields):
    import base64

    case_id = create_case_via_api(server.url, instance["token"], "BR-DROP-6", [])
    sign_in(page, "tech", next_path=f"/cases/{case_id}")
    page.wait_for_selector("#drop-zone")
    dropped = fields[:3]
    payload = [{"name": f.name, "data": base64.b64encode(f.read_bytes()).decode()} for f in dropped]
    page.evaluate(DROP_FILES, [page.query_selector("#drop-zone"), payload])
    page.wait_for_selector(f"#field-grid .field >> nth={len(dropped) - 1}", timeout=UPLOAD_TIMEOUT_MS)
    page.wait_for_selector(f"#upload-list li >> nth={len(dropped) - 1}")  # listed again after the reload
    assert page.locator("#upload-list li progress").count() == len(dropped)
    names = page.eval_on_selector_all("#field-grid .field-name", "els => els.map(e => e.title)")
    assert sorted(names) == sorted(f.name for f in dropped)  # two uploads run at once: either may be stored first
    assert page.problems == []


def test_a_non_diagnostic_sign_off(page, server, instance, data_dir):
    """No field counted: Non-diagnostic is offered first, and it needs a comment saying why."""
    refused = sorted((data_dir / "not_blood").glob("*"))[:1]
    case_id = create_case_via_api(server.url, instance["token"], "BR-ND-7", refused)
    sign_in(page, "rev", next_path=f"/cases/{case_id}")
    page.wait_for_selector("#review-form")
    first = page.eval_on_selector('input[name="final_call"]', "e => e.value")
    assert first == "non_diagnostic"
    page.locator("#review-panel").screenshot(path=str(ARTIFACTS / "cases-sign-off.png"))
    page.check("#call-non_diagnostic")
    page.click("#sign-off")
    assert page.evaluate("document.getElementById('comment').validity.valueMissing") is True  # a reason first
    assert api_case(page, case_id)["status"] == "open"
    page.fill("#comment", "Only an H&E section was sent; no blood smear field")
    page.click("#sign-off")
    page.wait_for_selector("#amend")
    assert page.get_attribute("#final-call", "data-label") == "non_diagnostic"
    assert page.inner_text("#final-call") == "Non-diagnostic"
    assert "cannot be called" in page.inner_text("#final-meaning")
    assert api_case(page, case_id)["final_call"] == "non_diagnostic"
    page.goto(f"{page.base}/cases?q=BR-ND-7")
    assert page.get_attribute("#case-table .final-call .badge", "data-label") == "non_diagnostic"
    assert page.problems == []


def test_a_field_opens_large_and_a_mistaken_one_is_removed(page, server, instance, fields):
    case_id = create_case_via_api(server.url, instance["token"], "BR-RM-8", fields[:3])
    before = None
    sign_in(page, "tech", next_path=f"/cases/{case_id}")
    page.wait_for_selector("#field-grid")
    before = api_case(page, case_id)
    target = next(i for i in before["images"] if i["result"]["valid"])
    dialog = page.locator(f"#field-dialog-{target['image_id']}")
    page.click(f'.field[data-image-id="{target["image_id"]}"] a.thumb')
    dialog.wait_for(state="visible")
    page.wait_for_function(
        f"() => document.querySelector('#field-dialog-{target['image_id']} img.large-original').naturalWidth > 0"
    )
    large = dialog.locator("img.large-original").bounding_box()
    thumb = page.locator(f'.field[data-image-id="{target["image_id"]}"] img.original').bounding_box()
    assert large["width"] > 2 * thumb["width"]  # opened large
    assert "Probabilities" in dialog.inner_text() and "Advanced Stage" in dialog.inner_text()
    dialog.locator(".show-heatmap").click()
    page.wait_for_function(
        f"() => document.querySelector('#field-dialog-{target['image_id']} img.large-heatmap').naturalWidth > 0"
    )
    assert dialog.locator("img.large-heatmap").is_visible() and not dialog.locator("img.large-original").is_visible()
    page.screenshot(path=str(ARTIFACTS / "cases-field-large.png"))
    dialog.locator("input[name=reason]").fill("Wrong patient's slide")
    dialog.locator(".remove-field").click()
    page.wait_for_selector("#removed-fields")
    after = api_case(page, case_id)
    assert [i["image_id"] for i in after["images"]] == [
        i["image_id"] for i in before["images"] if i["image_id"] != target["image_id"]
    ]
    assert after["removed_images"][0]["removed"]["reason"] == "Wrong patient's slide"
    assert page.locator(f'#field-grid .field[data-image-id="{target["image_id"]}"]').count() == 0
    page.click("#removed-fields summary")
    assert "Wrong patient's slide" in page.inner_text("#removed-fields")
    actions = page.eval_on_selector_all("#audit-table tbody tr", "els => els.map(e => e.dataset.action)")
    assert "image_removed" in actions
    assert page.problems == []


def test_an_admin_manages_users_on_the_users_page(page, browser, server):
    sign_in(page, "boss")
    page.click("#users-link")
    page.wait_for_selector("#users-table")
    names = page.eval_on_selector_all("#users-table tbody tr", "els => els.map(e => e.dataset.username)")
    assert {"boss", "rev", "tech"} <= set(names)
    page.fill("#new-username", "temp-browser")
    page.select_option("#new-role", "technician")
    page.fill("#new-password", PASSWORD)
    page.click("#add-user")
    page.wait_for_selector("#users-saved")
    assert page.get_attribute('tr[data-username="temp-browser"]', "data-disabled") == "false"
    page.fill("#new-username", "temp-browser")  # the same name again: said clearly, nothing changed
    page.fill("#new-password", PASSWORD)
    page.click("#add-user")
    page.wait_for_selector("#users-error")
    assert "already exists" in page.inner_text("#users-error")
    page.click("#disable-temp-browser")
    page.wait_for_selector('tr[data-username="temp-browser"][data-disabled="true"]')
    page.screenshot(path=str(ARTIFACTS / "cases-users.png"), full_page=True)
    assert page.problems == []

    # the disabled account cannot sign in; a technician has no Users page
    with watched_page(browser, server.url, 1200, TIMEOUT_MS) as other:
        other.base = server.url
        other.goto(other.base + "/login")
        assert "leukostage users" not in other.inner_text("main")  # no shell command for technicians
        other.fill("#username", "temp-browser")
        other.fill("#password", PASSWORD)
        other.click("#sign-in")
        other.wait_for_selector("#login-error")
        sign_in(other, "tech")
        assert other.locator("#users-link").count() == 0
        assert other.goto(other.base + "/users").status == 403


def test_a_field_without_a_class_shows_no_class_like_result(page, server, instance, fields, data_dir):
    """Issue 18: a real PBC cell (another laboratory: outside the training domain) beside a real smear. Its tile and
    its dialog name no class and colour none; its probabilities are behind a closed disclosure that says they are
    not evidence; the grid's heat-map view leaves it as it is, and its own heat map says it is not evidence."""
    pbc = sorted((data_dir / "pbc_sample" / "neutrophil").glob("*.jpg"))[0]
    case_id = create_case_via_api(server.url, instance["token"], "BR-UNC-18", [pbc, fields[0]])
    sign_in(page, "tech", next_path=f"/cases/{case_id}")
    page.wait_for_selector("#field-grid")
    images = {i["filename"]: i for i in api_case(page, case_id)["images"]}
    cell, smear = images[pbc.name], images[fields[0].name]
    assert cell["result"]["label"] == "uncertain" and cell["result"]["uncertain_reason"] == "outside_training_domain"
    assert smear["result"]["label"] in CLASS_KEYS
    names = [n for c in CLASSES for n in (c.display_name, c.dataset_label)]

    tile = page.locator(f'.field[data-image-id="{cell["image_id"]}"]')
    badge = tile.locator(".badge")
    assert badge.get_attribute("data-label") == "uncertain"
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == rgb_css(UNCERTAIN_COLOUR)
    assert "outside the training domain" in tile.inner_text()
    assert [n for n in names if n in tile.inner_text()] == []

    page.click("#view-heatmap")  # the grid's heat maps: the smear's, not the cell's (it has none to show)
    page.wait_for_selector(f'.field[data-image-id="{smear["image_id"]}"] img.heatmap', state="visible")
    assert tile.locator("img.original").is_visible() and tile.locator("img.heatmap").count() == 0

    dialog = page.locator(f"#field-dialog-{cell['image_id']}")
    tile.locator("a.thumb").click()
    dialog.wait_for(state="visible")
    assert dialog.locator("img.large-original").is_visible()  # opens on the original, not on a heat map
    assert [n for n in names if n in dialog.inner_text()] == []  # the closed disclosure hides the probabilities
    disclosure = dialog.locator("details.not-evidence")
    assert disclosure.evaluate("d => d.open") is False
    assert disclosure.locator("summary").inner_text() == NOT_EVIDENCE_LABEL
    disclosure.locator("summary").click()
    assert all(c.display_name in disclosure.inner_text() for c in CLASSES)
    assert disclosure.locator(".swatch").count() == 0  # no class colours
    dialog.locator(".show-heatmap").click()
    page.wait_for_function(
        f"() => document.querySelector('#field-dialog-{cell['image_id']} img.large-heatmap').naturalWidth > 0"
    )
    note = dialog.locator(".heatmap-note").inner_text()
    assert "not evidence for any class" in note and [n for n in names if n in note] == []
    page.screenshot(path=str(ARTIFACTS / "cases-field-uncertain.png"))
    assert page.problems == []
