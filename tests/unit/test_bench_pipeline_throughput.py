"""The throughput bench's alternation of the two phases (bench/pipeline_throughput.py
``alternate``): their flat-out rounds take turns, each phase's figures come back in order,
and a phase that fails stops the other's workers too."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from bench.pipeline_throughput import alternate, pair_ratios


def phase(
    name: str, rounds: int, log: list[str], fail_at: int | None = None
) -> Generator[None, None, dict[str, float]]:
    """A phase as ``run_phase`` is one: started up to its pause before the first round, then
    one round per ``next``; ``log`` records what ran and whether its workers were stopped."""
    try:
        log.append(f"{name} started")
        for k in range(rounds):
            yield
            if k == fail_at:
                raise RuntimeError(f"{name} round {k} failed")
            log.append(f"{name} round {k}")
        return {"msg_s": float(rounds), "name": float(len(name))}
    finally:
        log.append(f"{name} stopped")


def test_the_rounds_take_turns_and_the_figures_come_back_in_phase_order() -> None:
    log: list[str] = []
    first, second = alternate(phase("pass", 3, log), phase("pipeline", 3, log))
    assert (first["name"], second["name"]) == (4.0, 8.0)
    assert log == [
        "pass started",
        "pipeline started",
        "pass round 0",
        "pipeline round 0",
        "pass round 1",
        "pipeline round 1",
        "pass round 2",
        "pass stopped",
        "pipeline round 2",
        "pipeline stopped",
    ]


def failing(
    log: list[str], *phases: Generator[None, None, dict[str, float]]
) -> tuple[str, list[str]]:
    """``alternate``'s error, and ``log`` as it was when the error reached the caller (later,
    the garbage collector would close a forgotten phase and log it stopped anyway)."""
    with pytest.raises(RuntimeError) as raised:
        try:
            alternate(*phases)
        except RuntimeError:
            seen = list(log)
            raise
    return str(raised.value), seen


def test_a_phase_that_fails_stops_the_other_phases_workers() -> None:
    log: list[str] = []
    error, seen = failing(log, phase("pass", 3, log), phase("pipeline", 3, log, fail_at=1))
    assert error == "pipeline round 1 failed"
    assert seen[-3:] == ["pass round 1", "pipeline stopped", "pass stopped"]
    assert "pass round 2" not in seen


def test_a_phase_that_fails_to_start_stops_the_one_started_before_it() -> None:
    log: list[str] = []

    def broken() -> Generator[None, None, dict[str, float]]:
        raise RuntimeError("no broker")
        yield  # a generator, as run_phase is

    error, seen = failing(log, phase("pass", 2, log), broken())
    assert error == "no broker"
    assert seen == ["pass started", "pass stopped"]


def test_each_round_pair_has_its_own_ratio() -> None:
    base = {"msg_s:0": 4000.0, "msg_s:1": 5000.0}
    full = {"msg_s:0": 1000.0, "msg_s:1": 2000.0}
    assert pair_ratios(base, full, 2) == [0.25, 0.4]
