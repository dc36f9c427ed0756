"""The scheduler under asyncio: concurrent consumers each get their request's alone tokens, a
consumer that stops early aborts its request (its blocks go back), a bad request raises in
the caller, and the loop keeps serving afterwards."""

from __future__ import annotations

import asyncio
import random

import pytest

import plugformer
from plugformer.core.errors import ValidationError
from plugformer.core.serve.async_engine import AsyncEngine


@pytest.fixture(scope="module")
def tiny():
    return plugformer.Engine.from_overrides(["model=tiny"])


def test_concurrent_consumers_get_their_alone_tokens(tiny):
    rng = random.Random(3)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 30))],
             {"max_new_tokens": rng.randint(1, 12), "ignore_eos": True,
              "temperature": 0.9, "seed": i}) for i in range(30)]  # fmt: skip
    alone = [tiny.generate(ids, **kw).token_ids for ids, kw in reqs]

    async def main():
        served = AsyncEngine(tiny, block_size=4, num_blocks=64, max_num_seqs=6,
                             max_num_batched_tokens=48)  # fmt: skip

        async def one(i, ids, kw):
            await asyncio.sleep(0.002 * i)  # staggered arrivals
            return [
                o.token_id async for o in served.add_request(ids, **kw) if o.token_id is not None
            ]

        got = await asyncio.gather(*(one(i, ids, kw) for i, (ids, kw) in enumerate(reqs)))
        free = served.scheduler.pool.free_blocks, served.scheduler.pool.num_blocks
        await served.close()
        return got, free

    got, (free, total) = asyncio.run(main())
    assert got == alone
    assert free == total


def test_a_consumer_that_stops_aborts_and_bad_requests_raise(tiny):
    async def main():
        served = AsyncEngine(tiny, block_size=4, num_blocks=64, max_num_seqs=4)
        stream = served.add_request([1, 2, 3], request_id="long", max_new_tokens=200,
                                    ignore_eos=True)  # fmt: skip
        seen = 0
        async for _out in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()  # the consumer went away
        for _ in range(100):  # the abort lands between two steps
            if served.scheduler.pool.free_blocks == 64 and not served.scheduler.has_work():
                break
            await asyncio.sleep(0.01)
        freed = served.scheduler.pool.free_blocks
        with pytest.raises(ValidationError, match="max_new_tokens"):
            async for _ in served.add_request([1], max_new_tokens=-1):
                pass
        after = [o.token_id async for o in served.add_request([4, 5], max_new_tokens=3,
                                                              ignore_eos=True)]  # fmt: skip
        await served.close()
        return freed, after

    freed, after = asyncio.run(main())
    assert freed == 64
    assert after == tiny.generate([4, 5], max_new_tokens=3, ignore_eos=True).token_ids
