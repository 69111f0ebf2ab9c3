"""DeadlineWatch: one ticker enforcing many request deadlines, with asyncio.timeout's contract."""

from __future__ import annotations

import asyncio

import pytest

from kairos.proxy.deadline import DeadlineWatch


def test_expired_block_raises_timeout_error_and_the_task_goes_on() -> None:
    async def main() -> str:
        watch = DeadlineWatch(resolution=0.01)
        with pytest.raises(TimeoutError):
            async with watch.within(0.05):
                await asyncio.sleep(5)
        await asyncio.sleep(0.02)  # the task was uncancelled: later awaits work
        assert len(watch) == 0
        await watch.stop()
        return "after"

    assert asyncio.run(asyncio.wait_for(main(), 3)) == "after"


def test_block_that_finishes_in_time_is_untouched() -> None:
    async def main() -> int:
        watch = DeadlineWatch(resolution=0.01)
        async with watch.within(1.0):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # past nothing: no late cancellation arrives
        await watch.stop()
        return len(watch)

    assert asyncio.run(main()) == 0


def test_none_means_no_deadline() -> None:
    async def main() -> None:
        watch = DeadlineWatch(resolution=0.01)
        async with watch.within(None):
            await asyncio.sleep(0.05)
        assert watch._ticker is None  # nothing was started for it

    asyncio.run(main())


def test_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    async def main() -> None:
        watch = DeadlineWatch(resolution=0.01)

        async def guarded() -> None:
            async with watch.within(0.05):
                await asyncio.sleep(5)

        task = asyncio.create_task(guarded())
        await asyncio.sleep(0.01)
        task.cancel()  # e.g. server shutdown, before the deadline
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.stop()

    asyncio.run(main())


def test_many_concurrent_deadlines_each_fire_once() -> None:
    async def main() -> tuple[int, int]:
        watch = DeadlineWatch(resolution=0.01)
        timed_out = finished = 0

        async def one(delay: float) -> None:
            nonlocal timed_out, finished
            try:
                async with watch.within(0.1):
                    await asyncio.sleep(delay)
                finished += 1
            except TimeoutError:
                timed_out += 1

        await asyncio.gather(*(one(0.01 if i % 2 else 2.0) for i in range(200)))
        await watch.stop()
        return timed_out, finished

    assert asyncio.run(asyncio.wait_for(main(), 5)) == (100, 100)
