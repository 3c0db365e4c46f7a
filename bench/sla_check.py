"""CPU of one SLA check (``CaseKeeper.check_sla``, every 30 s) over a worker's stored cases.

    cd /work/main && .venv/bin/python bench/sla_check.py [--cases 100000] [--resolved 0.6]

The keeper's table holds every case a worker owns: the open ones and the resolved ones the
retention keeps for 30 days (``PIPELINE_CASE_RETENTION_DAYS``), so it grows with the traffic.
The cases are route's own (the throughput bench's messages through the default classifier and
``RouteAgent.route``, as ``bench/route_decisions.py --stage``), copied under other ids up to
``--cases``, a share ``--resolved`` of them resolved a day ago; the open ones' deadlines are
hours away, so a check emits nothing and measures only the walk.

Printed, process CPU (``time.process_time``) per check and per stored case:

- baseline: what every check did before the keeper kept the cases' next check times, each
  stored case parsed (``_open_case``) and each open one checked (``sla.check_sla``);
- first check: every value is new to the keeper, so each is read and its next check time
  computed (``sla.next_check_at``);
- next checks: unchanged values are not read again; only cases whose time has come are.

The three run in the same process, alternated ``--repeat`` times (a fresh keeper each time). Then,
in one more run under ``tracemalloc`` (not timed), the memory the keeper keeps between checks
(each case's value reference, open flag and next check time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from route_decisions import _Sink, realistic, stage_pass

from pipeline.config import Settings
from pipeline.domain.cases import CaseState
from pipeline.domain.workflow import load_workflow
from pipeline.events import utcnow
from pipeline.metrics import Metrics
from pipeline.route import sla
from pipeline.route.agents import CaseKeeper, _case_json, _open_case


class _Keep(_Sink):
    """Route's outputs dropped, the case states it writes to ``case-state`` kept."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, CaseState] = {}

    async def send(self, name: str, key: str | None, event: Any) -> None:
        if name == "case-state":
            state = event.state
            self.states[state.case_id] = state


def stored_cases(n: int, resolved: float) -> dict[str, str]:
    """``n`` table values (case JSON), route's cases copied under other ids."""
    sink = _Keep()
    stage_pass(realistic(3000, None), sink)
    base = list(sink.states.values())
    day_ago = utcnow() - timedelta(days=1)
    table: dict[str, str] = {}
    for i in range(n):
        state = base[i % len(base)]
        update: dict[str, Any] = {"case_id": f"case-{i}"}
        if i < n * resolved:
            update |= {"status": "resolved", "resolved_at": day_ago}
        elif state.status == "resolved":
            update |= {"status": "open", "resolved_at": None}
        table[f"case-{i}"] = _case_json(state.model_copy(update=update))
    return table


def keeper_for(table: dict[str, str], settings: Settings) -> CaseKeeper:
    """A keeper over ``table`` with the default workflow, its outputs nowhere."""
    metrics = Metrics()

    async def flush() -> None:
        return None

    ctx = SimpleNamespace(settings=settings, metrics=metrics, flush=flush)
    rt = SimpleNamespace(workflow=load_workflow(settings.rules_path))
    return CaseKeeper(cast(Any, ctx), cast(Any, rt), table, {})


def one_run(table: dict[str, str], settings: Settings, checks: int) -> list[float]:
    """CPU seconds of ``checks`` checks by a fresh keeper over ``table``."""
    keeper = keeper_for(table, settings)
    out = []
    for _ in range(checks):
        t0 = time.process_time()
        asyncio.run(keeper.check_sla())
        out.append(time.process_time() - t0)
    return out


def baseline(table: dict[str, str], settings: Settings) -> float:
    """CPU seconds of the check as it was: every stored case parsed, every open one checked."""
    wf = load_workflow(settings.rules_path)
    t0 = time.process_time()
    now = utcnow()
    for key in list(table):
        state = _open_case(table[key])
        if state is not None:
            sla.check_sla(state, wf, now, settings=settings)
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="stored cases")
    ap.add_argument("--resolved", type=float, default=0.6, help="share resolved a day ago")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    settings = Settings()
    table = stored_cases(args.cases, args.resolved)
    bases, firsts, nexts = [], [], []
    for _ in range(args.repeat):
        bases.append(baseline(table, settings))
        first, *rest = one_run(table, settings, 3)
        firsts.append(first)
        nexts.extend(rest)
    base = statistics.median(bases)
    first, after = statistics.median(firsts), statistics.median(nexts)
    keeper = keeper_for(table, settings)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(keeper.check_sla())
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per = 1e6 / args.cases
    sys.stdout.write(
        f"SLA check over {args.cases} stored cases ({args.resolved:.0%} resolved), median of "
        f"{args.repeat} runs:\n"
        f"  baseline (every case read, every open one checked): {base * 1000:8.1f} ms CPU, "
        f"{base * per:6.2f} us per case\n"
        f"  first check (every value read): {first * 1000:8.1f} ms CPU, "
        f"{first * per:6.2f} us per case\n"
        f"  next checks (unchanged values): {after * 1000:8.1f} ms CPU, "
        f"{after * per:6.2f} us per case\n"
        f"  ratio next checks/baseline: {after / base:.3f}, first check/baseline: "
        f"{first / base:.3f}\n"
        f"  kept between checks: {kept / 1e6:.1f} MB ({kept / args.cases:.0f} bytes per case)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
