"""Publish a few messages and make one RPC call, as a web node would."""

import asyncio

from tasks import RenderReport, SendWelcomeEmail, app

from rabbitworker import call, publish


async def main() -> None:
    async with app:  # connects, declares the topology, turns confirms on
        for user_id in (1, 2, 3):
            message_id = await publish(SendWelcomeEmail(user_id=user_id))
            print(f"published welcome email for user {user_id} ({message_id})")
        ready = await call(RenderReport(report_id=7), timeout=30)
        print(f"report ready at {ready.url}")


if __name__ == "__main__":
    asyncio.run(main())
