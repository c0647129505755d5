"""The dashboard in a real browser (headless Chromium driven by Playwright): the
queues page follows a publish, the dead-letters page replays a dead letter by a
click, and the task page shows it handled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect
from support import eventually, read_record
from support.dashboard import chromium, start_dashboard  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def cell(page: Page, queue: str, key: str) -> Any:
    return page.locator(f"tr[data-queue='{queue}'] [data-key='{key}']")


async def test_an_operator_watches_a_queue_and_replays_a_dead_letter_in_the_browser(
    app_module: Any,
    start_dashboard: Any,  # noqa: F811
    worker_process: Any,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executable = chromium()
    monkeypatch.setenv("RW_TEST_RESULTS", redis_url)
    m = app_module("ops_console")
    queue = m.name("jobs")
    board = start_dashboard("--app", "ops_console:app", "--interval", "0.3")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True)
        page = await browser.new_page(viewport={"width": 1100, "height": 420})
        await page.goto(board.base + "/")
        await expect(cell(page, queue, "ready")).to_have_text("0")
        await expect(page.locator("#updated")).to_contain_text("updated")

        # A publish shows up without a reload.
        async with m.app:
            await m.app.publish(m.Job(n=1))
            broken_id = await m.app.publish(m.Job(n=2, outcome="broken"))
        await expect(cell(page, queue, "ready")).to_have_text("2", timeout=10_000)

        # A worker handles one and dead-letters the other.
        worker_process("--app", "ops_console:app").wait_consuming()
        await expect(cell(page, queue, "dead_letters")).to_have_text("1", timeout=15_000)
        await expect(cell(page, queue, "ready")).to_have_text("0")
        await expect(cell(page, queue, "consumers")).to_have_text("1")
        await eventually(lambda: any(r[:2] == ["done", "1"] for r in read_record(tmp_path)))
        await page.wait_for_function(  # the chart has points to draw
            "document.querySelector('svg.chart .depth').getAttribute('points').includes(' ')"
        )
        await page.screenshot(path=str(tmp_path / "queues.png"))
        if os.environ.get("RW_SAVE_DASHBOARD_PNG"):  # how docs/dashboard.png is made
            await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))

        # The dead-letters page shows what failed and why; replay it once fixed.
        await page.click(f"tr[data-queue='{queue}'] a")
        row = page.locator(f"tr[data-id='{broken_id}']")
        await expect(row).to_contain_text("job 2 is broken")
        await expect(row).to_contain_text(m.name("job"))
        await page.screenshot(path=str(tmp_path / "dead-letters.png"))
        Path(f"{tmp_path / 'handled.txt'}.fixed").touch()
        await row.locator("input[type=checkbox]").check()
        await page.click("text=Replay selected")
        await expect(page.locator("#note")).to_have_text("Replayed 1 message(s).")
        await expect(page.locator("#empty")).to_be_visible()

        # Handled: the worker ran it afresh and the task page says it succeeded.
        await eventually(lambda: any(r[:2] == ["done", "2"] for r in read_record(tmp_path)))

        async def succeeded() -> bool:
            status = await m.app.status(broken_id)
            return status is not None and status.state.value == "succeeded"

        async with m.app:  # the result is written just after the handler returned
            await eventually(succeeded)
        await page.click("text=Task")
        await page.fill("input[name=id]", broken_id)
        await page.click("text=Look up")
        state = page.locator("[data-field=state]")
        await expect(state).to_have_text("succeeded", timeout=10_000)
        await expect(page.locator("[data-field=result]")).to_contain_text("job 2 done")
        await page.goto(board.base + "/")
        await expect(cell(page, queue, "dead_letters")).to_have_text("0")
        await browser.close()
