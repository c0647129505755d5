"""The example app: imported by the producer and the worker alike."""

import logging

from pydantic import BaseModel

from rabbitworker import App, Context, RetryPolicy, TaskMessage

log = logging.getLogger("tasks")
app = App("shop")  # broker URL from RABBITWORKER_URL, or App("shop", url=...)


class Mailer:
    """Stands for an email provider's client (test_tasks.py makes it fail)."""

    def send(self, user_id: int, template: str) -> None:
        pass


mailer = Mailer()


class SendWelcomeEmail(TaskMessage, routing_key="emails.welcome"):
    user_id: int  # pass ids, never ORM objects


class ReportReady(BaseModel):
    url: str


class RenderReport(TaskMessage[ReportReady], routing_key="reports.render"):
    report_id: int


@app.task(queue="emails", retry=RetryPolicy(max_attempts=5, backoff=[1, 10, 60]))
async def send_welcome_email(msg: SendWelcomeEmail, ctx: Context) -> None:
    mailer.send(msg.user_id, "welcome")
    ctx.logger.info("welcome email sent to user %d (message %s)", msg.user_id, ctx.message_id)


@app.task(queue="reports")
def render_report(msg: RenderReport) -> ReportReady:  # plain def runs in a thread pool
    log.info("rendered report %d", msg.report_id)
    return ReportReady(url=f"/reports/{msg.report_id}.pdf")
