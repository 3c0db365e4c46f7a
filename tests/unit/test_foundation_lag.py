"""Consumer lag and stall detection: the pure bookkeeping, with a fake clock."""

from __future__ import annotations

from pipeline.broker import MissedProbes
from pipeline.lag import CommitRegression, ProgressTracker

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


def test_a_committed_offset_that_goes_back_with_the_records_still_there_is_no_loss() -> None:
    # The fault run's false alarm (issue 11): after a rebalance the group's committed offset
    # of one partition went back (a member committed below an earlier commit) while the
    # partition still held every record. A warning, not a worker to restart.
    t = ProgressTracker(stall_after_s=60)
    assert t.observe_group({TP: 25, OTHER: 6}, {TP: 40, OTHER: 9}) == []
    regressions = t.observe_group({TP: 18, OTHER: 6}, {TP: 41, OTHER: 9})
    assert regressions == [CommitRegression(TP, 25, 18, 41)]
    assert t.lost == set()
    # The tracker follows the broker: the next commit above 18 is progress, not news.
    assert t.observe_group({TP: 20, OTHER: 7}, {TP: 41, OTHER: 9}) == []
    assert t.lost == set() and t.committed_by_topic() == {"care.inbound": 27}


def test_an_offset_missing_once_for_one_partition_is_no_loss_twice_in_a_row_is() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe_group({TP: None, OTHER: None}, {})  # nothing committed yet: nothing known
    t.observe_group({TP: 5, OTHER: 6}, {})
    t.observe_group({TP: None, OTHER: 7}, {})  # one answer without it (mid-rebalance)
    assert t.lost == set() and t.vanished == {TP}
    t.observe_group({TP: 5, OTHER: 8}, {})  # back
    t.observe_group({TP: None, OTHER: 8}, {})
    assert t.lost == set()
    t.observe_group({TP: None, OTHER: 8}, {})  # still gone on the next reading
    assert t.lost == {TP}
    # A group that committed in one partition only: one missing answer is not "all at once".
    one = ProgressTracker(stall_after_s=60)
    one.observe_group({TP: 5, OTHER: None}, {})
    one.observe_group({TP: None, OTHER: None}, {})
    assert one.lost == set()
    one.observe_group({TP: None, OTHER: None}, {})
    assert one.lost == {TP}


def test_the_whole_groups_offsets_vanishing_at_once_is_a_loss_for_good() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe_group({TP: 0, OTHER: 4}, {})
    t.observe_group({TP: 3, OTHER: 6}, {})
    t.observe_group({TP: None, OTHER: None}, {})  # the broker restarted empty
    assert t.lost == {TP, OTHER}
    t.observe_group({TP: 1, OTHER: 9}, {TP: 2, OTHER: 9})  # committed again: still lost
    t.keep_only(set())  # given away: the loss and the offsets are not forgotten
    assert t.lost == {TP, OTHER} and t.group_committed == {TP: 1, OTHER: 9}


def test_an_end_that_goes_back_or_empties_below_a_commit_is_a_loss_whoever_holds_it() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe_group({TP: 10, OTHER: 4}, {TP: 12, OTHER: 5})
    t.observe_group({TP: 10, OTHER: 4}, {TP: 12, OTHER: 3})  # the topic was created again
    assert t.lost == {OTHER}
    t.observe_group({TP: 2, OTHER: 1}, {TP: 0, OTHER: 3})  # empty below the commit
    assert t.lost == {TP, OTHER}


def test_a_lower_commit_with_the_partition_emptied_is_a_loss_not_a_warning() -> None:
    t = ProgressTracker(stall_after_s=60)
    t.observe_group({TP: 10}, {TP: 12})
    assert t.observe_group({TP: 1}, {TP: 1}) == []
    assert t.lost == {TP}


def test_one_missed_broker_probe_is_a_blip_two_in_a_row_are_unhealthy() -> None:
    # The one rule of the worker's lag timer and the console's broker watch.
    misses = MissedProbes()
    assert misses.missed() is False
    misses.answered()  # an answer in between: the count starts again
    assert misses.missed() is False
    assert misses.missed() is True
    assert misses.missed() is True  # stays unhealthy while the broker is away
    assert misses.in_a_row == 3
    misses.answered()
    assert misses.missed() is False
    assert misses.in_a_row == 1
