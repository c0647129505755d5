"""The PostgreSQL results store (extra `rabbitworker[postgres]`, psycopg 3): a table
of statuses whose upsert keeps the newest, and LISTEN/NOTIFY on final states so
readers wait without polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from .status import TaskStatus

__all__ = ["PostgresResultStore"]

log = logging.getLogger("rabbitworker.results")

_CHANNEL = "rabbitworker_results"
# Expired rows are invisible at once and deleted at most this often.
_SWEEP_EVERY_S = 60.0


class PostgresResultStore:
    """Statuses in `table` (created when missing), one row per message id."""

    def __init__(self, url: str, *, table: str = "rabbitworker_results") -> None:
        self.url = url
        self.table = sql.Identifier(table)
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._listener: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._swept = 0.0

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (message_id text PRIMARY KEY, "
                    "rank bigint NOT NULL, status jsonb NOT NULL, "
                    "expires_at timestamptz NOT NULL)"
                ).format(self.table)
            )
            self._conn = conn
        return self._conn

    async def save(self, status: TaskStatus, ttl: float) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=ttl)
        upsert = sql.SQL(
            "INSERT INTO {t} AS r (message_id, rank, status, expires_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (message_id) DO UPDATE SET "
            "rank = excluded.rank, status = excluded.status, expires_at = excluded.expires_at "
            "WHERE r.rank <= excluded.rank OR r.expires_at <= now()"
        ).format(t=self.table)
        async with self._lock:
            conn = await self._connection()
            async with conn.transaction():
                await conn.execute(
                    upsert, (status.message_id, status.rank, status.model_dump_json(), expires)
                )
                if status.state.final:
                    await conn.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, status.message_id))
            if time.monotonic() - self._swept > _SWEEP_EVERY_S:
                self._swept = time.monotonic()
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE expires_at <= now()").format(self.table)
                )

    async def load(self, message_id: str) -> TaskStatus | None:
        query = sql.SQL("SELECT status::text FROM {} WHERE message_id = %s AND expires_at > now()")
        async with self._lock:
            conn = await self._connection()
            cursor = await conn.execute(query.format(self.table), (message_id,))
            row = await cursor.fetchone()
        return TaskStatus.model_validate_json(str(row[0])) if row else None

    async def wait(self, message_id: str, timeout: float) -> TaskStatus | None:
        waiter = asyncio.get_running_loop().create_future()
        await self._listen()
        self._waiters.setdefault(message_id, set()).add(waiter)
        try:
            # Listening first, then read: a final state written in between is seen.
            status = await self.load(message_id)
            if status is not None and status.state.final:
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
            return await self.load(message_id)
        finally:
            waiters = self._waiters.get(message_id, set())
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(message_id, None)

    async def _listen(self) -> None:
        if self._listening is not None and not self._listening.done():
            return
        self._listener = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_CHANNEL)))
        self._listening = asyncio.ensure_future(self._notifications(self._listener))

    async def _notifications(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        try:
            async for notify in conn.notifies():
                for waiter in self._waiters.get(notify.payload, set()):
                    if not waiter.done():
                        waiter.set_result(None)
        except psycopg.Error as exc:  # readers fall back to their timeout
            log.warning("results store: lost the notification connection (%s)", exc)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(BaseException):
                await self._listening
        for conn in (self._listener, self._conn):
            if conn is not None and not conn.closed:
                await conn.close()
