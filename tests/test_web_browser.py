"""The web pages in a real browser (Playwright driving Debian's chromium) against a live server on the tiny profile.

Set ``CLINISYNTH_SCREENSHOTS=DIR`` to save the pages' screenshots there (the README's come from ``docs/``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from _server_helpers import REQUEST, make_app

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

TOKEN = "browser-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCREENSHOTS = os.environ.get("CLINISYNTH_SCREENSHOTS")
#: Playwright's own limit for one wait (ms): the tiny run takes seconds, the shared CI machine may be slow.
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    """A uvicorn server in a thread, on a socket bound here (a free port, no race), ready once health answers."""
    import httpx
    import uvicorn

    out = tmp_path_factory.mktemp("web") / "out"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(make_app(out, cache_dir, token=TOKEN, max_running_per_token=4), log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:  # readiness: the health route answers once the planner is loaded
        try:
            if httpx.get(f"{base}/api/health", headers=AUTH, timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)
    yield base, out
    instance.should_exit = True
    thread.join(timeout=60)
    listener.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


def _shot(page, name: str) -> None:
    if SCREENSHOTS:
        import io

        from PIL import Image

        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(page.screenshot(full_page=True))) as shot:
            small = shot.convert("RGB").resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
            small.quantize(colors=128).save(Path(SCREENSHOTS) / name, optimize=True)  # small PNGs for the README


def _plan(page, base: str, n: int) -> None:
    page.goto(f"{base}/generate#token={TOKEN}")
    page.fill("#description", REQUEST)
    page.click("#plan-button")
    page.wait_for_selector("#plan:not([hidden])")
    page.fill("#opt-n", str(n))


def _api(server, method: str, path: str, **kwargs):
    import httpx

    return httpx.request(method, server[0] + path, headers=AUTH, timeout=60, **kwargs)


def test_type_plan_generate_progress_gallery(page, server):
    base, out = server
    _plan(page, base, n=2)
    finding = page.locator("#plan-findings tbody tr", has_text="pleural effusion")
    assert finding.locator("td").nth(1).inner_text() == "present"
    assert finding.locator("td").nth(2).inner_text() == "right"
    assert finding.locator("td").nth(3).inner_text() == "moderate"
    assert page.inner_text("#plan-prompt").strip() and page.inner_text("#plan-label") == "pleural_effusion"
    assert "base model" in page.inner_text("#plan-adapter") and page.inner_text("#plan-report")
    page.click("#generate-button")
    page.wait_for_selector("#progress-section:not([hidden])")
    page.wait_for_selector("body[data-job-status]")
    assert page.get_attribute("body", "data-job-status") == "complete"
    assert page.inner_text("#progress-text").startswith("2 of 2 image(s) stored")
    cards = page.locator("#gallery .card")
    assert cards.count() == 2
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")
    for index in range(2):
        assert cards.nth(index).locator("img").get_attribute("src").startswith("blob:")
        assert (out / cards.nth(index).get_attribute("data-file")).is_file()
    _shot(page, "generate.png")


def test_cancel_keeps_what_was_accepted(page, server, monkeypatch):
    from clinisynth.server.jobs import JobManager

    publish = JobManager._publish

    def hold_after_first_image(self, job, name, data):
        publish(self, job, name, data)
        if name == "stored" and len(job.stored) == 1:
            job.cancel_requested.wait(timeout=120)  # the run waits here until the page's Cancel arrives

    monkeypatch.setattr(JobManager, "_publish", hold_after_first_image)
    base, out = server
    _plan(page, base, n=3)
    page.click("#generate-button")
    page.wait_for_selector("#gallery .card")
    page.click("#cancel-button")
    page.wait_for_selector("body[data-job-status]")
    assert page.get_attribute("body", "data-job-status") == "cancelled"
    shown = [page.locator("#gallery .card").nth(i).get_attribute("data-file")
             for i in range(page.locator("#gallery .card").count())]
    runs = _api(server, "GET", "/api/runs").json()
    trace = _api(server, "GET", f"/api/runs/{runs[-1]['run_id']}/trace").json()
    assert trace["status"] == "cancelled" and trace["stored"] and shown == trace["stored"]
    assert all((out / name).is_file() for name in shown)


def test_approve_and_reject_persist_after_a_reload(page, server):
    job = _api(server, "POST", "/api/jobs", json={"text": REQUEST, "n": 2}).json()
    _wait_for_end(server, job["id"])
    base, out = server
    page.goto(f"{base}/review?run={job['run_id']}#token={TOKEN}")
    page.wait_for_selector(f"body[data-loaded='{job['run_id']}']")
    assert page.locator("#timeline li").count() >= 6
    assert page.locator("#attempts tbody tr img").count() >= 2
    cards = page.locator("#stored .card")
    assert cards.count() == 2
    cards.nth(0).locator("textarea").fill("clear effusion")
    cards.nth(0).locator("button.approve").click()
    page.wait_for_selector("#stored .card[data-review='approved']")
    cards.nth(1).locator("textarea").fill("blurred")
    cards.nth(1).locator("button.reject").click()
    page.wait_for_selector("#stored .card[data-review='rejected']")
    page.reload()
    page.wait_for_selector(f"body[data-loaded='{job['run_id']}']")
    cards = page.locator("#stored .card")
    assert [cards.nth(i).get_attribute("data-review") for i in range(2)] == ["approved", "rejected"]
    assert [cards.nth(i).locator("textarea").input_value() for i in range(2)] == ["clear effusion", "blurred"]
    assert (out / "reviews.jsonl").read_text().count("\n") >= 2
    _shot(page, "review.png")


def test_a_page_without_the_token_is_refused(browser, server):
    base, _ = server
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"{base}/review")
    page.wait_for_function("document.getElementById('runs-error').textContent.length > 0")
    assert "missing token" in page.inner_text("#runs-error")
    assert page.locator("#runs tbody tr").count() == 0
    answer = page.request.get(f"{base}/api/runs")
    assert answer.status == 401 and "token" in answer.json()["error"]
    context.close()


def _wait_for_end(server, job_id: str) -> None:
    """Read the job's event stream up to its ``end`` event."""
    import httpx

    with httpx.stream("GET", f"{server[0]}/api/jobs/{job_id}/events", headers=AUTH, timeout=None) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: end"):
                return
    raise AssertionError(f"the event stream of job {job_id} closed without an end event")
