"""The triggerer's session pool: one async gcsfs (one aiohttp session) per loop and options,
closed when its last user lets go. No request is made: the endpoint is never dialled."""

from __future__ import annotations

import asyncio

from airflow_tf_ckpt.hooks.sessions import SharedAsyncFs


def test_one_session_per_loop_and_options_closed_by_the_last_user() -> None:
    async def scenario() -> None:
        pool, loop = SharedAsyncFs(), asyncio.get_running_loop()
        opts = {"endpoint_url": "http://127.0.0.1:9", "token": "anon"}
        a, b = await pool.acquire(loop, opts), await pool.acquire(loop, dict(opts))
        other = await pool.acquire(loop, {**opts, "project": "p2"})
        assert a is b and a.refs == 2 and other is not a
        session = a.fs.session
        assert session is not None and not session.closed
        await pool.release(a)
        assert not session.closed  # b still holds it
        await pool.release(b)
        assert session.closed and other.fs.session is not session and not other.fs.session.closed
        again = await pool.acquire(loop, opts)  # a fresh instance, a fresh session
        assert again is not a and again.fs.session is not session
        for entry in (other, again):
            await pool.release(entry)
        assert other.fs.session.closed and again.fs.session.closed

    asyncio.run(scenario())
