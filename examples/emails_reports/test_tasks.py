"""Tests of the example's tasks, with no RabbitMQ: rabbitworker's pytest plugin runs
the app and its worker on an in-memory broker (`rabbitworker_broker`), with virtual
time, so the 71 s of back-off below take milliseconds. Run: pytest test_tasks.py"""

import pytest
import tasks
from tasks import RenderReport, ReportReady, SendWelcomeEmail, app

from rabbitworker import App, call, publish
from rabbitworker.testing import TestBroker


@pytest.fixture
def rabbitworker_app() -> App:
    return app  # the app the rabbitworker_broker fixture runs


async def test_a_report_is_rendered_over_rpc(rabbitworker_broker: TestBroker) -> None:
    assert await call(RenderReport(report_id=7), timeout=5) == ReportReady(url="/reports/7.pdf")


async def test_a_welcome_email_is_sent_once(rabbitworker_broker: TestBroker) -> None:
    message_id = await publish(SendWelcomeEmail(user_id=42))
    await rabbitworker_broker.join()
    [outcome] = rabbitworker_broker.outcomes(message_id)
    assert (outcome.kind, outcome.attempt) == ("ack", 1)


async def test_a_failing_email_is_retried_by_its_backoff_then_dead_lettered(
    rabbitworker_broker: TestBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def provider_down(user_id: int, template: str) -> None:
        raise ConnectionError("the mail provider is down")

    monkeypatch.setattr(tasks.mailer, "send", provider_down)
    message_id = await publish(SendWelcomeEmail(user_id=42))
    await rabbitworker_broker.join()  # moves virtual time through the 1, 10, 60 s waits

    outcomes = rabbitworker_broker.outcomes(message_id)
    assert [o.kind for o in outcomes] == ["retry"] * 4 + ["dead_letter"]
    assert [o.at for o in outcomes] == [0, 1, 11, 71, 131]  # the last wait repeats
    [letter] = rabbitworker_broker.dead_letters("emails")
    assert (letter.error_type, letter.reason) == ("ConnectionError", "the mail provider is down")
    assert letter.attempt == 5
