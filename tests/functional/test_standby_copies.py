"""A table's changelog records, applied from the fetch loop (``RouterRecovery.take_changelog``),
leave what Faust's own path leaves: the same tables, offsets, buffers and signals, for a
standby copy and for a restore.

Real Faust objects (a ``RouterApp`` with the pipeline's table manager and tables), nothing
started and no broker: Faust's path is its ``Recovery._slurp_changelogs`` fed through the
changelog queue, as the conductor feeds it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.types import TP, Message

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.faust_app import RouterApp
from pipeline.metrics import Metrics
from pipeline.recovery import FENCE_KEY, RouterRecovery, RouterTableManager, _Change, plain_records


def _context(datadir: Path) -> Context:
    """A worker's context: a ``RouterApp`` with the pipeline's table manager, not started."""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", app_id="standby-test")
    app = RouterApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",  # never contacted
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        topic_partitions=settings.partitions,
        TableManager=RouterTableManager,
    )
    app.finalize()
    return Context(settings=settings, metrics=Metrics(), app=app)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return _context(tmp_path)


def _table(ctx: Context, name: str) -> tuple[Any, TP]:
    """A pipeline table (``Context.table``), with the changelog channel Faust's table manager
    gives it when it starts, and its changelog's partition 1 (the one the tests fill)."""
    table = ctx.table(name)
    tables: Any = ctx.app.tables
    tables._channels[table] = table.changelog_topic.clone_using_queue(tables.changelog_queue)
    return table, TP(table.changelog_topic.get_topic_name(), 1)


def _records(tp: TP, n: int) -> list[Message]:
    """``n`` changelog records of ``tp`` as a table writes them (its JSON text as a JSON
    string): keys written again and again, tombstones, records seen twice (a fetch that
    overlapped the last one)."""
    out: list[Message] = []
    for offset in range(n):
        key = f"customer-{offset % 7}".encode()
        value = None if offset % 11 == 10 else orjson.dumps(f'{{"n": {offset}}}')
        out.append(Message(tp.topic, tp.partition, offset, 0.0, 0, None, key, value, None, tp=tp))
    return out[:5] + out[3:]


async def _faust_path(recovery: RouterRecovery, table: Any, records: list[Message]) -> None:
    """The conductor's hand-over (decode, queue) and Faust's loop, until it took them all."""
    channel = recovery.tables._channels[table]
    queue = recovery.tables.changelog_queue
    for message in records:
        queue.put_nowait(await channel.decode(message, propagate=True))
    loop = asyncio.ensure_future(RouterRecovery._slurp_changelogs(recovery))  # a ServiceTask
    try:
        while not queue.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


def _state(recovery: RouterRecovery, table: Any, tp: TP) -> tuple[Any, ...]:
    return (
        dict(table.data),
        recovery.standby_offsets[tp],
        [(e.key, e.value) for e in recovery.buffers[table]],
        recovery.buffer_sizes[tp],
    )


@pytest.mark.parametrize("size", [1000, 16], ids=["buffered", "applied-in-batches"])
async def test_the_fetch_loop_leaves_a_copy_as_fausts_loop_does(ctx: Context, size: int) -> None:
    app: Any = ctx.app
    (theirs, tp_theirs), (ours, tp_ours) = _table(ctx, "faust-path"), _table(ctx, "fetch-loop")
    recovery = app.tables.recovery
    assert isinstance(recovery, RouterRecovery)
    for table, tp in ((theirs, tp_theirs), (ours, tp_ours)):
        table.standby_buffer_size = size
        recovery.add_standby(table, tp)
    await _faust_path(recovery, theirs, _records(tp_theirs, 40))
    for message in _records(tp_ours, 40):
        assert await recovery.take_changelog(tp_ours, message)
    table_a, offset_a, buffer_a, size_a = _state(recovery, theirs, tp_theirs)
    table_b, offset_b, buffer_b, size_b = _state(recovery, ours, tp_ours)
    assert (offset_b, buffer_b, size_b) == (offset_a, buffer_a, size_a) == (39, buffer_a, size)
    assert table_b == table_a
    assert (len(buffer_a), bool(table_a)) == ((40, False) if size == 1000 else (8, True))
    # A rebalance (or a promotion) applies what the buffers still hold: the same tables.
    recovery.flush_buffers()
    assert dict(ours.data) == dict(theirs.data)
    assert dict(ours.data) == {
        f"customer-{k}": f'{{"n": {max(o for o in range(40) if o % 7 == k)}}}'
        for k in range(7)
        if max(o for o in range(40) if o % 7 == k) % 11 != 10
    }


async def test_other_records_are_left_to_fausts_path(ctx: Context) -> None:
    app: Any = ctx.app
    table, standby = _table(ctx, "copies")
    recovery = app.tables.recovery
    topic = standby.topic
    active = TP(topic, 2)
    recovery.add_standby(table, standby)
    recovery.add_active(table, active)
    [record] = _records(active, 1)
    assert not await recovery.take_changelog(active, record)  # an active partition's restore
    recovery.in_recovery = True
    [record] = _records(standby, 1)
    assert not await recovery.take_changelog(standby, record)  # a restore under way
    recovery.in_recovery = False
    bad = Message(topic, 1, 0, 0.0, 0, None, b"\xff\xfe", b"{}", None, tp=standby)
    assert not await recovery.take_changelog(standby, bad)  # not UTF-8: Faust reports it
    assert recovery.standby_offsets[standby] is None and not recovery.buffers[table]
    assert await recovery.take_changelog(standby, record)
    assert recovery.standby_offsets[standby] == 0


async def test_a_plain_tables_records_decode_as_fausts_channel_decodes_them(ctx: Context) -> None:
    """``_Change.of`` (the tables of ``Context.table``) against Faust's changelog channel:
    the same key and value, and the same error kind, for every record shape."""
    table, tp = _table(ctx, "copies")
    channel: Any = ctx.app.tables._channels[table]  # type: ignore[attr-defined]
    assert plain_records(table, channel)
    values = [b'"{\\"n\\": 1}"', b'"\xd0\xba\xd0\xb5\xd0\xb9\xd1\x81"', b"null", b"12", b'""', None]
    keys = [b"c42", "клиент-7".encode(), FENCE_KEY, b"", None]
    for key, value in ((k, v) for k in keys for v in values):
        message = Message(tp.topic, 1, 0, 0.0, 0, None, key, value, None, tp=tp)
        theirs = await channel.decode(message, propagate=True)
        ours = _Change.of(message)
        assert (ours.key, ours.value, ours.message) == (theirs.key, theirs.value, message)
    for key, value, error in (
        (b"\xff\xfe", b'"x"', KeyDecodeError),
        (b"c1", b'"unterminated', ValueDecodeError),
        (b"c1", b"\xff", ValueDecodeError),
    ):
        message = Message(tp.topic, 1, 0, 0.0, 0, None, key, value, None, tp=tp)
        with pytest.raises(error):
            await channel.decode(message, propagate=True)
        with pytest.raises(error):
            _Change.of(message)


async def test_a_table_of_other_records_is_decoded_by_its_channel(ctx: Context) -> None:
    """A table whose records are not plain (here JSON keys, Faust's default, and raw values)
    keeps Faust's decoding, and its values are what Faust would apply."""
    app: Any = ctx.app
    table = app.Table("raw-values", key_type=str, value_type=bytes)
    table.value_serializer = "raw"
    table.changelog_topic = table._new_changelog_topic()
    channel = table.changelog_topic.clone_using_queue(app.tables.changelog_queue)
    app.tables._channels[table] = channel
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    recovery = app.tables.recovery
    recovery.add_standby(table, tp)
    assert not plain_records(table, channel)
    record = Message(tp.topic, 1, 0, 0.0, 0, None, b'"k"', b'"not json"', None, tp=tp)
    assert await recovery.take_changelog(tp, record)
    recovery.flush_buffers()
    assert dict(table.data) == {"k": b'"not json"'}


async def test_the_copies_are_ready_once_every_standby_partition_caught_up(ctx: Context) -> None:
    app: Any = ctx.app
    table, first = _table(ctx, "copies")
    recovery = app.tables.recovery
    tps = [first, TP(first.topic, 3)]
    for tp in tps:
        recovery.add_standby(table, tp)
        recovery.standby_highwaters[tp] = 4
    assert not app.tables.standbys_ready
    for message in _records(tps[0], 5) + _records(tps[1], 4):
        await recovery.take_changelog(message.tp, message)
    assert not app.tables.standbys_ready  # partition 3 is one record short
    [last] = _records(tps[1], 5)[-1:]
    await recovery.take_changelog(tps[1], last)
    assert app.tables.standbys_ready


async def test_a_copy_that_fails_to_apply_logs_it_and_goes_on_as_fausts_loop_does(
    ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    app: Any = ctx.app
    # Faust's loop logs an error of a record and takes the next; the batch it failed to apply
    # stays in the buffer and is applied with the next record. The fetch loop must not stop
    # for a standby copy either: the worker's own partitions go on.
    table, tp = _table(ctx, "copies")
    recovery = app.tables.recovery
    table.standby_buffer_size = 2
    recovery.add_standby(table, tp)
    broken = [True]  # the first batch only
    apply = table.apply_changelog_batch

    def flaky(batch: Any) -> None:
        if broken:
            broken.clear()
            raise RuntimeError("store refused")
        apply(batch)

    table.apply_changelog_batch = flaky
    records = _records(tp, 3)[:3]
    assert await recovery.take_changelog(tp, records[0])
    assert await recovery.take_changelog(tp, records[1])  # the batch of two fails
    assert "store refused" in caplog.text
    assert not table.data and len(recovery.buffers[table]) == 2
    assert await recovery.take_changelog(tp, records[2])  # applied with the next record
    assert dict(table.data) == {f"customer-{k}": f'{{"n": {k}}}' for k in range(3)}
    assert recovery.standby_offsets[tp] == 2


async def test_a_restore_from_the_fetch_loop_ends_as_fausts_loop_ends_it(tmp_path: Path) -> None:
    # Two workers restoring the same records, one each way: the restore ends (its buffers
    # applied, the recovery's end signalled) at the record that reaches the highwater.
    ends: list[tuple[Any, ...]] = []
    for way in ("faust", "fetch loop"):
        ctx = _context(tmp_path / way.replace(" ", "-"))
        app: Any = ctx.app
        table, tp = _table(ctx, "cases")
        recovery = app.tables.recovery
        table.recovery_buffer_size = 16
        recovery.add_active(table, tp)
        recovery.active_offsets[tp] = -1  # ``_build_offsets``: nothing restored yet
        recovery.active_highwaters[tp] = 39
        recovery._set_recovery_started()
        records = _records(tp, 40)
        waiting = asyncio.ensure_future(recovery.signal_recovery_end.wait())  # the recovery
        await asyncio.sleep(0)
        if way == "faust":
            await _faust_path(recovery, table, records)
        else:
            for message in records[:-1]:
                assert await recovery.take_changelog(tp, message)
            assert recovery.in_recovery and not recovery.signal_recovery_end.is_set()
            assert await recovery.take_changelog(tp, records[-1])
        ends.append(
            (
                dict(table.data),
                recovery.active_offsets[tp],
                len(recovery.buffers[table]),
                recovery.in_recovery,
                app.in_recovery,
                await asyncio.wait_for(waiting, 5.0),  # woken
                recovery.signal_recovery_end.is_set(),  # and cleared: the next one waits
                app.tables.standbys_ready,
            )
        )
    faust, ours = ends
    assert ours == faust
    assert faust[1:] == (39, 0, False, False, True, False, True) and len(faust[0]) == 7
