"""The console's ask box in headless Chromium on a phone, against a real daemon (a looping file source, mosquitto, the
STAND-IN model), without pressing Connect: the page asks the configured source over `POST /api/ask` (no camera, no
peer; the answer streams as NDJSON), then asks about the past around a timeline event ("Ask about this":
since/until, answered from the event store). Screenshots go to `test-artifacts/screenshots/` (tests/fixtures/screens.py).
"""

from __future__ import annotations

import re

import pytest

from tests.console_daemon import QUESTION_REPLY, console_daemon, page_errors
from tests.fixtures.screens import PHONE

pytestmark = [pytest.mark.browser, pytest.mark.mqtt, pytest.mark.timeout(120)]


async def test_console_phone_asks_a_source_without_a_camera_and_asks_about_an_event(
        tmp_path, stub_llm, running_mosquitto, topic_prefix, chromium, screenshots_dir):
    async with console_daemon(tmp_path, stub_llm, mosquitto=running_mosquitto, prefix=topic_prefix) as daemon:
        context = await chromium.new_context(**PHONE, bypass_csp=False)
        page = await context.new_page()
        errors = page_errors(page)
        try:
            await page.goto(daemon.driver.page_url())
            await page.locator(".tile[data-source=door] img.shot:not(.hidden)").wait_for(timeout=20000)
            await page.locator("#ask-button:not([disabled])").wait_for(timeout=10000)  # no Connect pressed
            assert await page.input_value("#ask-source") == "door"  # no "my camera" without one
            assert await page.is_hidden("#ask-hint")
            assert "Connect" not in await page.inner_text("#notice")
            await page.fill("#question", "What do you see?")
            await page.click("#ask-button")
            first = page.locator(".answer.done").first
            await first.wait_for(timeout=20000)
            assert await first.locator(".text").inner_text() == QUESTION_REPLY
            assert await first.locator(".q").inner_text() == "What do you see? (door)"
            assert stub_llm.model in await first.locator(".meta").inner_text()
            streamed = await page.evaluate("Object.values(window.agentPage.answers).map((a) => a.nextSeq)")
            assert streamed == [len(QUESTION_REPLY.split(" ")) + 1]  # it came in pieces (NDJSON), every one of them
            assert daemon.driver.peers() == [] and await page.evaluate("window.agentPage.pc") is None
            await page.locator("#ask").scroll_into_view_if_needed()
            await page.screenshot(path=str(screenshots_dir / "phone-5-ask-without-camera.png"))

            event = page.locator(".event[data-kind=answer]").first  # the answer, kept in the event store
            await event.wait_for(timeout=20000)
            await event.get_by_role("button", name="Ask about this").click()
            await page.locator("#ask-past:not(.hidden)").wait_for(timeout=5000)
            when = (await page.inner_text("#ask-past-label")).removesuffix(" ± 60 s")
            assert "Asking about" in await page.inner_text("#ask-past") and when in await event.inner_text()
            question = await page.input_value("#question")
            assert question.startswith("About ")
            await page.fill("#question", question + "what was asked then?")
            await page.click("#ask-button")
            await page.locator(".answer.done").nth(1).wait_for(timeout=20000)
            past = page.locator(".answer.done").nth(1)  # the newer one (drawn on top: column-reverse)
            assert (await past.locator(".q").inner_text()).endswith("what was asked then? (door, "
                                                                    f"{when} ± 60 s)")
            assert re.search(r"from [1-9][0-9]* stored event", await past.locator(".meta").inner_text())
            assert await page.is_hidden("#ask-past")  # asked: the next question is about now again
            await page.screenshot(path=str(screenshots_dir / "phone-6-ask-about-an-event.png"))
            assert errors == []
        finally:
            await context.close()
