"""Consumer lag and stall detection: the pure bookkeeping, with a fake clock."""

from __future__ import annotations

from pipeline.lag import ProgressTracker

TP = ("care.inbound", 0)
OTHER = ("care.inbound", 1)


def test_lag_is_end_minus_position_per_topic() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe(TP, 10, 15, now=0)
    t.observe(OTHER, 7, 7, now=0)
    t.observe(("care.replies", 0), 3, 4, now=0)
    assert t.lag_by_topic() == {"care.inbound": 5, "care.replies": 1}


def test_a_position_that_does_not_move_with_records_waiting_is_a_stall() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe(TP, 10, 15, now=0)
    t.observe(TP, 10, 16, now=59)
    assert t.stalled(now=59) == []
    t.observe(TP, 10, 16, now=60)
    assert t.stalled(now=60) == [TP]
    t.observe(TP, 11, 16, now=61)  # it moved: the clock starts again
    assert t.stalled(now=61) == []
    assert t.stalled(now=120) == []
    assert t.stalled(now=121) == [TP]


def test_an_idle_partition_is_not_stalled_and_waiting_starts_the_clock() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe(TP, 10, 10, now=0)
    t.observe(TP, 10, 10, now=500)
    assert t.stalled(now=500) == []
    t.observe(TP, 10, 12, now=1000)  # records arrive after a long idle time
    assert t.stalled(now=1000) == []
    t.observe(TP, 10, 12, now=1059)
    assert t.stalled(now=1059) == []
    t.observe(TP, 10, 12, now=1060)
    assert t.stalled(now=1060) == [TP]


def test_partitions_given_away_are_forgotten() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe(TP, 1, 5, now=0)
    t.observe(OTHER, 1, 5, now=0)
    t.keep_only({OTHER})
    assert t.stalled(now=100) == [OTHER]
    assert t.lag_by_topic() == {"care.inbound": 4}


def test_an_end_offset_that_goes_back_or_empties_behind_us_is_a_loss() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe(TP, 10, 15, now=0)
    t.observe(TP, 12, 15, now=1)  # Tansu's under-reported end stays put: no loss
    t.observe(OTHER, 0, 0, now=0)  # a partition nothing was written to yet
    assert t.lost == set()
    t.observe(TP, 12, 3, now=2)  # the topic was created again (or the broker restarted)
    t.observe(OTHER, 4, 0, now=2)  # empty, yet four records were processed from it
    assert t.lost == {TP, OTHER}


def test_a_committed_offset_that_goes_back_or_vanishes_is_a_loss_for_good() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe_committed(TP, None)  # nothing committed yet
    t.observe_committed(TP, 0)
    t.observe_committed(OTHER, 4)
    t.observe_committed(OTHER, 6)
    assert t.lost == set() and t.committed_high == {TP: 0, OTHER: 6}
    t.observe_committed(TP, 3)
    t.observe_committed(OTHER, None)  # the broker restarted empty: the group is gone
    assert t.lost == {OTHER}
    t.observe_committed(TP, 1)  # went back
    t.observe_committed(OTHER, 9)  # committed again on the new broker: still lost
    assert t.lost == {TP, OTHER}
    t.keep_only(set())  # given away: the loss and the highs are not forgotten
    assert t.lost == {TP, OTHER} and t.committed_high == {TP: 3, OTHER: 9}
    assert t.committed_by_topic() == {"care.inbound": 12}
