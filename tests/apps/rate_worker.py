"""One process of the rate-limit test: once connected it prints "ready", reads two epoch times
(start and end) from stdin, then acquires one token at a time from a shared limiter and prints
how many were granted inside that window.

Usage: python rate_worker.py REDIS_URL RATE
"""

import sys
import time

import anyio

from streammachine import RedisConnection
from streammachine.schedule import RateLimiter


async def main(url: str, rate: str) -> None:
    redis = RedisConnection(url=url)
    limiter = RateLimiter(redis, "rate-test", rate)
    await redis.client.ping()
    print("ready", flush=True)
    start, end = (float(x) for x in sys.stdin.readline().split())
    await anyio.sleep(max(0.0, start - time.time()))
    granted = 0
    while True:
        await limiter.acquire(1)
        if time.time() >= end:
            break
        granted += 1
    await redis.close()
    print(granted, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
