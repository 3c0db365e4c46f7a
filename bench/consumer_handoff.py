"""What handing one fetched record to an agent's queue costs: Faust's race against the flow's
suspension (``Service.wait_first(callback(message), suspend_flow.wait())``, as
``Consumer._drain_messages`` in faust-streaming 0.15.3) against the direct ``await
callback(message)`` and one turn of the event loop of
``pipeline.faust_app._Consumer._drain_messages``.

    python bench/consumer_handoff.py [--n 20000] [--reps 5] [--loop uvloop|asyncio]

The callback is shaped like Faust's conductor handler for a record: a lock, then a put into a
queue that an agent task drains. The two ways alternate within each repetition; prints
process CPU µs per record for each (median of ``--reps``) and their ratio. Single process,
no broker: it isolates the hand-over, which every record a worker reads pays once (issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from mode import Service

Handoff = Callable[[int], Awaitable[None]]


class _Fetcher(Service):
    """A mode service, as Faust's consumer is (``wait_first`` watches its stop and crash)."""


async def one_way(n: int, faust_race: bool) -> float:
    """CPU seconds to hand ``n`` records over one way, an agent task draining the queue."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=4096)
    lock = asyncio.Lock()
    suspend_flow = asyncio.Event()
    service = _Fetcher()

    async def callback(record: int) -> None:
        async with lock:
            await queue.put(record)

    async def agent() -> None:
        for _ in range(n):
            await queue.get()

    drained = asyncio.create_task(agent())
    t0 = time.process_time()
    for i in range(n):
        if faust_race:
            await service.wait_first(callback(i), suspend_flow.wait())
            if i % 100 == 0:
                await asyncio.sleep(0)  # Faust's drain yields every 100 records too
        else:
            await callback(i)
            await asyncio.sleep(0)  # the worker's drain yields after every record
    await drained
    return time.process_time() - t0


async def compare(n: int, reps: int) -> tuple[list[float], list[float]]:
    faust, direct = [], []
    await one_way(n // 10, True)  # warm-up
    for _ in range(reps):
        faust.append(await one_way(n, True) * 1e6 / n)
        direct.append(await one_way(n, False) * 1e6 / n)
    return faust, direct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="records per repetition and way")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        faust, direct = uvloop.run(compare(args.n, args.reps))
    else:
        faust, direct = asyncio.run(compare(args.n, args.reps))
    f, d = statistics.median(faust), statistics.median(direct)
    sys.stdout.write(
        f"hand-over per record ({args.loop}, {args.n} records x {args.reps} reps, alternated): "
        f"Faust's race {f:.1f} µs (min {min(faust):.1f}), direct {d:.1f} µs "
        f"(min {min(direct):.1f}); direct/Faust {d / f:.3f}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
