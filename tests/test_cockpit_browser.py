"""The cockpit in real headless Chromium (Debian's, driven by Playwright): a stakeholder logs in by
the link ``tamc serve`` prints, sees its machine's telemetry change live and the 3D view follow it,
asks the machine a question and gets an answer, votes Yes on a proposal and sees the tally change.
A screenshot is saved as an artifact (``artifacts/cockpit.png``, or ``$TAMC_ARTIFACTS``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.runner import Served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TAMC_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--enable-unsafe-swiftshader"])
        yield b
        b.close()


@pytest.mark.slow
def test_a_stakeholder_watches_chats_and_votes_in_the_cockpit(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    alice = served.login("alice")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{served.url}/#token={alice.token}")

    # logged in, the fleet map and list show every machine; alice's own machine opens
    expect(page.locator("#who")).to_contain_text("alice")
    expect(page.locator("#machines li")).to_have_count(len({n.id for n in served.city.nodes}))
    expect(page.locator("#fleet-map circle")).to_have_count(len({n.id for n in served.city.nodes}))
    expect(page.locator("#machine-panel")).to_be_visible()
    expect(page.locator("#m-roles")).to_contain_text("stakeholder")
    machine = page.locator("#machines li.selected").get_attribute("data-id")
    assert machine is not None

    # telemetry changes live, the gauges and the 3D view follow it
    expect(page.locator("#view3d canvas")).to_have_count(1)
    first = page.locator("#telemetry-at").inner_text()
    expect(page.locator("#telemetry-at")).not_to_have_text(first, timeout=15_000)
    expect(page.locator('#gauges [data-gauge="wear"]')).to_be_visible()
    expect(page.locator('#gauges [data-gauge="nozzle °C"]')).to_be_visible()
    head = page.locator("#view3d").get_attribute("data-head-x")
    assert head not in (None, ""), "the 3D view never drew a frame"

    # a requester's job for alice's printer: it wins it, works, and the print head moves with it
    rita = served.login("rita")
    job = {"kind": "printer_3d", "capability": "print", "region": "north", "deadline_h": 48, "reserve": 80_000_000,
           "material": "PLA", "size_mm": [80, 60, 40], "amount": 60}
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {rita.token}"}) as api:
        assert api.post("/v1/jobs", json=job).status_code == 202
    expect(page.locator("#m-state")).to_have_text("working", timeout=30_000)
    expect(page.locator("#queue tbody")).to_contain_text("running", timeout=10_000)
    xs = set()
    for _ in range(6):
        xs.add(page.locator("#view3d").get_attribute("data-head-x"))
        page.wait_for_timeout(150)
    assert len(xs) > 2, f"the print head did not move while working: {xs}"
    expect(page.locator("#m-job")).to_contain_text("%")

    # ask the machine; the answer streams into the chat panel
    page.fill("#chat-input", "how much did you earn this week?")
    page.click("#chat-form button")
    answer = page.locator("#chat-log li.machine[data-mode]")
    expect(answer).to_have_count(1, timeout=20_000)
    expect(answer).to_contain_text("units for")
    assert answer.get_attribute("data-mode") == "offline"

    # a proposal opened elsewhere appears live; alice votes Yes and the tally moves
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {alice.token}"}) as api:
        opened = api.post(f"/v1/machines/{machine}/proposals",
                          json={"kind": "pricing", "title": "Floor at 3 units", "price_floor": "3"})
        assert opened.status_code == 201, opened.text
        proposal = opened.json()["id"]
    item = page.locator(f'#proposals li[data-id="{proposal}"]')
    expect(item).to_be_visible(timeout=15_000)
    expect(item.locator(".tally-text")).to_contain_text("yes 0 ·")
    item.locator("button.yes").click()
    expect(item.locator(".tally-text")).to_contain_text("yes 50 ·", timeout=15_000)
    expect(item.locator(".tally .yes")).to_have_attribute("style", "width:50.0%")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "cockpit.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, f"the page logged errors: {errors}"
    page.close()


@pytest.mark.slow
def test_an_operator_takes_over_and_hands_back_in_the_console(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    olga = served.login("olga")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served.url}/#token={olga.token}")
    expect(page.locator("#console")).to_be_visible(timeout=15_000)  # an operator of every machine sees the console
    expect(page.locator("#handoffs")).to_be_visible()
    machine = page.locator("#machines li.selected").get_attribute("data-id")
    node = served.city.node(machine or "")
    assert node is not None and node.held_by is None

    page.click("#c-takeover")
    expect(page.locator("#c-held")).to_have_text("you hold this machine", timeout=10_000)
    assert node.held_by == olga.did
    expect(page.locator(f'#handoff-queue li:has-text("{machine}")')).to_contain_text("taken")
    expect(page.locator("#c-handoff")).to_contain_text("operator")
    page.click("#c-pad button[data-cmd=pause]")
    expect(page.locator("#c-log li").first).to_contain_text("pause", timeout=10_000)
    page.fill("#c-value", "999")
    page.click("#c-set")
    expect(page.locator("#c-log li.refused").first).to_contain_text("set refused", timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    page.click("#c-back button[data-decision=continue]")
    expect(page.locator("#c-log li").first).to_contain_text("handed back", timeout=10_000)
    expect(page.locator("#c-held")).to_have_text("")
    assert node.held_by is None
    audit = httpx.get(f"{served.url}/v1/machines/{machine}/control/audit", headers={"Authorization": f"Bearer {olga.token}"}).json()
    assert [a["command"] for a in audit][:2] == ["handback", "set"] and audit[-1]["command"] == "takeover"
    assert not errors, f"the page logged errors: {errors}"
    page.close()
