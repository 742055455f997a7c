"""The outbox: tasks committed with their state, sent to the broker after commit, kept through outages."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from app.db import get_session_factory, session_scope
from app.outbox.celery_client import DEFAULT_QUEUE, make_celery_client
from app.outbox.dispatcher import OutboxDispatcher
from app.outbox.models import OutboxMessage
from app.outbox.service import dispatch_all_pending, dispatch_pending, enqueue
from app.settings import Settings, get_settings
from tests.api.seeding import seed, unique_subject

# A Redis database of its own, so test messages never reach a worker listening on the real broker.
TEST_REDIS_DB = 13
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def quiet_api_dispatcher(client) -> Any:
    """The test app's own dispatcher (when settings run one) would race these tests for the rows; and
    the test tasks left behind must not reach a real broker afterwards."""
    dispatcher = getattr(client.app.state, "outbox_dispatcher", None)
    if dispatcher is not None:
        dispatcher.stop()
    yield
    dispatch_all_pending(get_session_factory(), lambda _name, _kwargs: None)
    if dispatcher is not None:
        dispatcher.start()


class Recorder:
    """A broker stand-in: records sends, or fails them while `down`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.arrived = threading.Event()

    def __call__(self, task_name: str, kwargs: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((task_name, kwargs))
        self.arrived.set()

    def payloads(self, marker: str) -> list[dict[str, Any]]:
        return [kwargs for _, kwargs in self.sent if kwargs.get("marker") == marker]


def _rows(marker: str) -> list[OutboxMessage]:
    with session_scope() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        return [row for row in rows if row.payload.get("marker") == marker]


def _enqueue(marker: str, count: int = 1) -> None:
    with session_scope() as session:
        for index in range(count):
            enqueue(session, "lethe.test", {"marker": marker, "index": index})


def test_rows_exist_only_when_the_transaction_commits(database_url) -> None:
    marker = uuid.uuid4().hex
    session = get_session_factory()()
    enqueue(session, "lethe.test", {"marker": marker})
    session.rollback()
    session.close()
    assert _rows(marker) == []
    _enqueue(marker)
    assert len(_rows(marker)) == 1 and _rows(marker)[0].dispatched_at is None


def test_dispatch_sends_pending_rows_in_order_once(database_url) -> None:
    marker = uuid.uuid4().hex
    _enqueue(marker, 3)
    broker = Recorder()

    dispatch_all_pending(get_session_factory(), broker, batch_size=2)

    assert [p["index"] for p in broker.payloads(marker)] == [0, 1, 2]
    assert all(row.dispatched_at is not None and row.attempts == 1 for row in _rows(marker))
    dispatch_all_pending(get_session_factory(), broker)
    assert len(broker.payloads(marker)) == 3


def test_broker_outage_keeps_rows_pending_until_it_is_back(database_url) -> None:
    marker = uuid.uuid4().hex
    _enqueue(marker, 2)
    broker = Recorder()
    broker.down = True

    result = dispatch_pending(get_session_factory(), broker)

    assert result.failed == 1 and result.pending
    rows = _rows(marker)
    assert all(row.dispatched_at is None for row in rows)
    assert any(row.attempts == 1 and "broker unreachable" in (row.last_error or "") for row in rows)

    broker.down = False
    dispatch_all_pending(get_session_factory(), broker)
    assert [p["index"] for p in broker.payloads(marker)] == [0, 1]
    assert all(row.dispatched_at is not None and row.last_error is None for row in _rows(marker))


def test_planning_rows_of_a_pass_go_out_as_one_task(database_url) -> None:
    dispatch_all_pending(get_session_factory(), Recorder())  # start from an empty outbox
    marker = uuid.uuid4().hex
    with session_scope() as session:
        enqueue(session, "lethe.plan", {"request_ids": ["r1", "r2"]})
        enqueue(session, "lethe.test", {"marker": marker, "index": 0})
        enqueue(session, "lethe.plan", {"request_ids": ["r3", "r1"]})
        enqueue(session, "lethe.plan", {"request_id": "old-form", "tenant_id": "t"})  # not a list: alone
    broker = Recorder()

    dispatch_all_pending(get_session_factory(), broker)

    assert broker.sent == [
        ("lethe.plan", {"request_ids": ["r1", "r2", "r3"]}),
        ("lethe.test", {"marker": marker, "index": 0}),
        ("lethe.plan", {"request_id": "old-form", "tenant_id": "t"}),
    ]
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(OutboxMessage.dispatched_at.is_(None))) == 0


def test_a_refused_joined_task_keeps_all_its_rows(database_url) -> None:
    dispatch_all_pending(get_session_factory(), Recorder())
    with session_scope() as session:
        first = enqueue(session, "lethe.plan", {"request_ids": ["a"]})
        second = enqueue(session, "lethe.plan", {"request_ids": ["b"]})
        session.flush()
        ids = [first.id, second.id]
    broker = Recorder()
    broker.down = True

    result = dispatch_pending(get_session_factory(), broker)

    assert result.failed == 2 and result.sent == 0
    with session_scope() as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.id.in_(ids)).order_by(OutboxMessage.id)
        ).all()
        assert [(row.dispatched_at, row.attempts) for row in rows] == [(None, 1), (None, 1)]
        assert all("broker unreachable" in (row.last_error or "") for row in rows)
    broker.down = False
    dispatch_all_pending(get_session_factory(), broker)
    assert broker.sent == [("lethe.plan", {"request_ids": ["a", "b"]})]


def test_dispatcher_thread_sends_right_after_commit(database_url) -> None:
    broker = Recorder()
    dispatch_all_pending(get_session_factory(), broker)  # start from an empty outbox
    broker = Recorder()
    # A poll interval far longer than the test: only the commit signal can explain a quick send.
    dispatcher = OutboxDispatcher(lambda: get_session_factory()(), broker, poll_seconds=60)
    dispatcher.start()
    try:
        time.sleep(0.2)
        marker = uuid.uuid4().hex
        _enqueue(marker)
        assert broker.arrived.wait(5)
        deadline = time.monotonic() + 5
        while not broker.payloads(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.payloads(marker) == [{"marker": marker, "index": 0}]
    finally:
        dispatcher.stop()


def test_a_deletion_request_is_planned_through_the_outbox(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=auth_a).json()[
        "id"
    ]
    broker = Recorder()

    dispatch_all_pending(get_session_factory(), broker)

    # Pending planning tasks are sent joined (earlier tests may have left some): the request is in one.
    planned = [rid for name, payload in broker.sent if name == "lethe.plan" for rid in payload["request_ids"]]
    assert planned.count(request_id) == 1


# ---------------------------------------------------------------- real Redis


@pytest.fixture
def redis_broker() -> Any:
    base = get_settings().broker_url.rsplit("/", 1)[0]
    connection = redis.Redis.from_url(f"{base}/{TEST_REDIS_DB}")
    try:
        connection.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the tests need Redis at {base}: {exc}")
    connection.delete(DEFAULT_QUEUE)
    yield f"{base}/{TEST_REDIS_DB}", connection
    for key in connection.scan_iter(match=f"*{DEFAULT_QUEUE}*"):
        connection.delete(key)
    connection.close()


def _queued_tasks(connection: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    tasks = []
    # Kombu pushes on the left and workers pop on the right: reversed, the list is in delivery order.
    for raw in reversed(connection.lrange(DEFAULT_QUEUE, 0, -1)):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], kwargs))
    return tasks


def test_outage_of_a_real_broker_then_recovery(database_url, redis_broker) -> None:
    url, connection = redis_broker
    marker = uuid.uuid4().hex
    _enqueue(marker, 2)
    down = make_celery_client(Settings(broker_url=UNREACHABLE_BROKER))
    up = make_celery_client(Settings(broker_url=url))

    def send_with(client):
        def send(task_name: str, kwargs: dict[str, Any]) -> None:
            client.send_task(task_name, kwargs=kwargs, retry=False)

        return send

    started = time.monotonic()
    result = dispatch_pending(get_session_factory(), send_with(down))
    assert result.failed == 1 and time.monotonic() - started < 5  # fails fast, does not hang
    assert all(row.dispatched_at is None for row in _rows(marker))

    dispatch_all_pending(get_session_factory(), send_with(up))

    mine = [(name, kwargs) for name, kwargs in _queued_tasks(connection) if kwargs.get("marker") == marker]
    assert mine == [
        ("lethe.test", {"marker": marker, "index": 0}),
        ("lethe.test", {"marker": marker, "index": 1}),
    ]
    assert all(row.dispatched_at is not None for row in _rows(marker))


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("lethe.train", "gpu"),
        ("lethe.unlearn", "gpu"),
        ("lethe.verify", "gpu"),
        ("lethe.plan", "default"),
        ("lethe.deliver_webhook", "default"),
        ("lethe.promote", "default"),
    ],
)
def test_gpu_work_is_routed_to_the_gpu_queue(task_name: str, queue: str) -> None:
    router = make_celery_client(Settings()).amqp.router
    assert router.route({}, task_name)["queue"].name == queue
