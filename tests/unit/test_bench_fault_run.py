"""The fault bench's count of deliveries (bench/fault_run.py ``count_sends``): a platform call
carries no reply id, so deliveries are matched to the reply parts that render to them."""

from __future__ import annotations

from bench.fault_run import Sends, count_sends

A = ("6000001", "3", "Ваш заказ в пути.")
B = ("6000002", "1", "Спасибо, мы разберёмся.")


def test_two_replies_with_the_same_text_to_one_message_are_not_a_part_sent_twice() -> None:
    # Two reply ids render the same chat, message and text: two deliveries are expected.
    sends = count_sends([A, A], [(A, "reply_1", 0), (A, "reply_2", 0)])
    assert sends == Sends(
        delivered=2, parts_sent_twice=0, same_text_twice=1, parts_undelivered=0, unmatched=0
    )


def test_a_part_delivered_again_is_sent_twice_and_a_replayed_record_is_one_part() -> None:
    # reply_1's record was read twice (a replay: same id, same part); delivered three times.
    sends = count_sends([A, A, A, B], [(A, "reply_1", 0), (A, "reply_1", 0), (B, "reply_9", 0)])
    assert (sends.delivered, sends.parts_sent_twice, sends.same_text_twice) == (4, 2, 2)
    assert (sends.parts_undelivered, sends.unmatched) == (0, 0)


def test_a_missing_part_is_undelivered_and_an_unknown_delivery_unmatched() -> None:
    long_1 = ("6000001", "3", "first half")
    long_2 = ("6000001", "3", "second half")
    sends = count_sends([long_1, B], [(long_1, "reply_1", 0), (long_2, "reply_1", 1)])
    assert (sends.parts_undelivered, sends.unmatched, sends.parts_sent_twice) == (1, 1, 0)
