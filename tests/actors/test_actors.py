"""The actor runtime on its own: mailboxes, addresses, replies, ask and supervision."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    ActorStopped,
    AskTimeout,
    Decision,
    Mailbox,
    MailboxFull,
    Reply,
    RestartPolicy,
    Supervisor,
    ask,
    open_supervisor,
)


class Boom(Exception):
    """The failure our test children raise."""


# ---- Mailbox and Address ----------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -1])
def test_mailbox_rejects_a_capacity_below_one(capacity: int) -> None:
    with pytest.raises(ValueError):
        Mailbox(capacity)


def test_tell_nowait_raises_mailbox_full_once_capacity_is_reached() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.address.tell_nowait(1)
    mailbox.address.tell_nowait(2)
    with pytest.raises(MailboxFull):
        mailbox.address.tell_nowait(3)
    assert [mailbox.receive_nowait(), mailbox.receive_nowait()] == [1, 2]
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


def test_tell_nowait_raises_actor_stopped_after_the_mailbox_is_closed() -> None:
    mailbox: Mailbox[int] = Mailbox(4)
    mailbox.close()
    with pytest.raises(ActorStopped):
        mailbox.address.tell_nowait(1)


async def test_tell_and_tell_within_raise_actor_stopped_after_the_mailbox_is_closed() -> None:
    mailbox: Mailbox[int] = Mailbox(4)
    mailbox.close()
    with pytest.raises(ActorStopped):
        await mailbox.address.tell(1)
    with pytest.raises(ActorStopped):
        await mailbox.address.tell_within(1, 1.0)


async def test_tell_within_waits_its_deadline_then_raises_mailbox_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[str] = Mailbox(1)
    mailbox.address.tell_nowait("first")
    started = trio.current_time()
    with pytest.raises(MailboxFull):
        await mailbox.address.tell_within("second", 5.0)
    assert trio.current_time() - started == pytest.approx(5.0)
    assert mailbox.statistics().depth == 1
    assert mailbox.receive_nowait() == "first"


async def test_tell_within_with_no_time_left_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[str] = Mailbox(1)
    mailbox.address.tell_nowait("first")
    started = trio.current_time()
    with pytest.raises(MailboxFull):
        await mailbox.address.tell_within("second", 0)
    assert trio.current_time() == started


async def test_tell_within_succeeds_when_room_appears_before_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[str] = Mailbox(1)
    mailbox.address.tell_nowait("first")
    taken: list[str] = []

    async def consume_later() -> None:
        await trio.sleep(2.0)
        taken.append(await mailbox.receive())

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume_later)
        await mailbox.address.tell_within("second", 5.0)
        elapsed = trio.current_time() - started
    assert elapsed == pytest.approx(2.0)
    assert taken == ["first"]
    assert mailbox.receive_nowait() == "second"


async def test_tell_waits_for_room_and_is_counted_as_a_waiting_sender() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.address.tell_nowait(1)
    done = trio.Event()

    async def put() -> None:
        await mailbox.address.tell(2)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert mailbox.statistics().senders_waiting == 1
        assert mailbox.receive_nowait() == 1
        await done.wait()
    assert mailbox.receive_nowait() == 2


def test_statistics_report_depth_and_capacity() -> None:
    mailbox: Mailbox[int] = Mailbox(3)
    stats = mailbox.statistics()
    assert (stats.capacity, stats.depth, stats.senders_waiting, stats.receivers_waiting) == (
        3, 0, 0, 0,
    )
    mailbox.address.tell_nowait(1)
    mailbox.address.tell_nowait(2)
    assert mailbox.statistics().depth == 2
    mailbox.receive_nowait()
    assert mailbox.statistics().depth == 1
    assert mailbox.statistics().capacity == 3


async def test_statistics_count_a_waiting_receiver() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.receive)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.statistics().receivers_waiting == 1
        mailbox.address.tell_nowait(7)
    assert mailbox.statistics().receivers_waiting == 0


async def test_iteration_ends_once_every_sender_handle_is_closed() -> None:
    mailbox: Mailbox[int] = Mailbox(4)
    clone = mailbox.address.clone()
    clone.tell_nowait(1)
    clone.tell_nowait(2)
    mailbox.close_senders()
    clone.close()
    assert [message async for message in mailbox] == [1, 2]


async def test_parked_senders_are_served_in_order_as_room_is_made() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.address.tell_nowait(0)

    async with trio.open_nursery() as nursery:
        for n in (1, 2, 3):
            nursery.start_soon(mailbox.address.tell, n)
            await trio.testing.wait_all_tasks_blocked()  # parked in this order
        assert mailbox.statistics().senders_waiting == 3
        taken = [mailbox.receive_nowait() for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
    assert [*taken, mailbox.receive_nowait()] == [0, 1, 2, 3]


async def test_a_cancelled_parked_sender_puts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.address.tell_nowait(1)
    with trio.move_on_after(1.0):
        await mailbox.address.tell(2)
    assert mailbox.statistics().senders_waiting == 0
    assert mailbox.receive_nowait() == 1
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


async def test_closing_wakes_parked_senders_with_actor_stopped_and_the_receiver() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.address.tell_nowait(1)
    outcomes: list[str] = []

    async def put() -> None:
        try:
            await mailbox.address.tell(2)
        except ActorStopped:
            outcomes.append("stopped")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close()
    assert outcomes == ["stopped"]

    empty: Mailbox[int] = Mailbox(1)

    async def receive() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await empty.receive()
        outcomes.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert empty.receiver_waiting
        empty.close()
    assert outcomes == ["stopped", "closed"]


async def test_a_parked_receiver_is_handed_a_message_and_ends_when_every_address_closes() -> (
    None
):
    mailbox: Mailbox[int] = Mailbox(1)
    received: list[int] = []

    async def receive_all() -> None:
        async for message in mailbox:
            received.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.address.tell_nowait(1)  # handed over: nothing queued
        assert mailbox.statistics().depth == 0
        mailbox.address.tell_nowait(2)  # the receiver has not run yet: this one waits
        assert mailbox.statistics().depth == 1
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close_senders()  # the receiver is parked again: it ends
    assert received == [1, 2]


# ---- Reply and ask ----------------------------------------------------------------------


async def test_reply_keeps_the_first_answer_and_ignores_a_second() -> None:
    reply: Reply[int] = Reply()
    assert not reply.answered
    reply.send(1)
    reply.send(2)
    reply.fail(Boom("too late"))
    assert reply.answered
    assert await reply.wait() == 1


async def test_reply_fail_is_raised_by_wait() -> None:
    reply: Reply[int] = Reply()
    error = Boom("no answer for you")
    reply.fail(error)
    reply.send(5)
    with pytest.raises(Boom) as info:
        await reply.wait()
    assert info.value is error


async def test_reply_wait_blocks_until_answered() -> None:
    reply: Reply[str] = Reply()
    got: list[str] = []

    async def waiter() -> None:
        got.append(await reply.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        reply.send("now")
    assert got == ["now"]


async def test_wait_answered_by_sees_an_idle_actors_answer_without_time_passing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[tuple[int, Reply[int]]] = Mailbox(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(doubler, mailbox)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        reply: Reply[int] = Reply()
        mailbox.address.tell_nowait((5, reply))
        assert await reply.wait_answered_by(started + 10) is True
        assert reply.result() == 10 and trio.current_time() == started
        nursery.cancel_scope.cancel()


async def test_wait_answered_by_waits_past_its_spin_rounds_for_a_late_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply: Reply[str] = Reply()

    async def late() -> None:
        await trio.sleep(4)
        reply.send("late")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late)
        started = trio.current_time()
        assert await reply.wait_answered_by(started + 5) is True
        assert reply.result() == "late" and trio.current_time() - started == 4


async def test_wait_answered_by_gives_up_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply: Reply[str] = Reply()
    started = trio.current_time()
    assert await reply.wait_answered_by(started + 2) is False
    assert trio.current_time() - started == pytest.approx(2) and not reply.answered


async def test_wait_answered_by_is_cancelled_by_an_enclosing_scope_while_spinning() -> None:
    reply: Reply[str] = Reply()
    with trio.CancelScope() as scope:
        scope.cancel()
        await reply.wait_answered_by(trio.current_time() + 10)
    assert scope.cancelled_caught and not reply.answered


async def doubler(mailbox: Mailbox[tuple[int, Reply[int]]]) -> None:
    async for number, reply in mailbox:
        reply.send(number * 2)


async def test_ask_round_trip_gets_the_actors_answer() -> None:
    mailbox: Mailbox[tuple[int, Reply[int]]] = Mailbox(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(doubler, mailbox)
        assert await ask(mailbox.address, lambda reply: (21, reply), timeout=5) == 42
        assert await ask(mailbox.address, lambda reply: (-3, reply), timeout=5) == -6
        nursery.cancel_scope.cancel()


async def test_ask_raises_the_error_the_actor_fails_with() -> None:
    mailbox: Mailbox[Reply[int]] = Mailbox(1)

    async def failing_actor() -> None:
        reply = await mailbox.receive()
        reply.fail(Boom("refused"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(failing_actor)
        with pytest.raises(Boom, match="refused"):
            await ask(mailbox.address, lambda reply: reply, timeout=5)


async def test_ask_raises_ask_timeout_when_nobody_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[Reply[int]] = Mailbox(1)
    started = trio.current_time()
    with pytest.raises(AskTimeout):
        await ask(mailbox.address, lambda reply: reply, timeout=3.0)
    assert trio.current_time() - started == pytest.approx(3.0)
    # The question was delivered; only the answer never came.
    assert mailbox.statistics().depth == 1


async def test_ask_timeout_also_bounds_waiting_for_mailbox_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox: Mailbox[Reply[int] | None] = Mailbox(1)
    mailbox.address.tell_nowait(None)
    started = trio.current_time()
    with pytest.raises(AskTimeout):
        await ask(mailbox.address, lambda reply: reply, timeout=2.0)
    assert trio.current_time() - started == pytest.approx(2.0)
    assert mailbox.statistics().depth == 1


async def test_ask_raises_actor_stopped_when_the_mailbox_is_closed() -> None:
    mailbox: Mailbox[Reply[int]] = Mailbox(1)
    mailbox.close()
    with pytest.raises(ActorStopped):
        await ask(mailbox.address, lambda reply: reply, timeout=1.0)


# ---- Supervisor -------------------------------------------------------------------------


class Child:
    """A child whose behaviour per attempt is scripted; counts its attempts."""

    def __init__(self, crashes: int = 0, value: Any = None, crash_before_started: bool = False):
        self.crashes = crashes
        self.value = value
        self.crash_before_started = crash_before_started
        self.attempts = 0
        self.running = False

    async def __call__(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.attempts += 1
        if self.crash_before_started:
            raise Boom("failed to start")
        task_status.started(self.value)
        if self.attempts <= self.crashes:
            raise Boom(f"crash {self.attempts}")
        self.running = True
        try:
            await trio.sleep_forever()
        finally:
            self.running = False


async def test_start_returns_the_value_the_child_passed_to_started() -> None:
    child = Child(value={"address": 123})
    async with open_supervisor("sup") as supervisor:
        assert await supervisor.start("one", child) == {"address": 123}
        assert supervisor.statistics().children == 1
        supervisor.cancel()


async def test_a_crash_before_started_is_raised_to_the_start_caller_and_not_restarted() -> None:
    child = Child(crash_before_started=True)
    policy = RestartPolicy(max_restarts=5, exhausted=Decision.STOP)
    calls: list[tuple[str, BaseException, Decision]] = []
    async with open_supervisor("sup", on_crash=lambda *args: calls.append(args)) as supervisor:
        with pytest.raises(Boom, match="failed to start"):
            await supervisor.start("early", child, policy=policy)
        stats = supervisor.statistics()
    assert child.attempts == 1
    assert (stats.children, stats.crashes, stats.restarts) == (0, 0, 0)
    assert calls == []


async def test_start_soon_does_not_wait_and_a_crash_before_started_goes_to_the_policy() -> (
    None
):
    child = Child(crash_before_started=True)
    policy = RestartPolicy(max_restarts=2, exhausted=Decision.STOP)
    calls: list[tuple[str, BaseException, Decision]] = []
    async with open_supervisor("sup", on_crash=lambda *args: calls.append(args)) as supervisor:
        supervisor.start_soon("early", child, policy=policy)
        assert child.attempts == 0  # not run yet: the caller did not wait
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
    assert child.attempts == 3
    assert (stats.crashes, stats.restarts, stats.stops) == (3, 2, 1)
    assert [decision for _, _, decision in calls] == [
        Decision.RESTART, Decision.RESTART, Decision.STOP,
    ]


async def test_a_crashing_child_is_restarted_and_its_sibling_is_untouched() -> None:
    flaky = Child(crashes=3)
    steady = Child()
    policy = RestartPolicy(max_restarts=5, window_seconds=60.0)
    async with open_supervisor("sup") as supervisor:
        await supervisor.start("steady", steady)
        await supervisor.start("flaky", flaky, policy=policy)
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        assert flaky.attempts == 4
        assert flaky.running
        assert (stats.children, stats.crashes, stats.restarts, stats.stops) == (2, 3, 3, 0)
        assert steady.attempts == 1
        assert steady.running
        supervisor.cancel()


async def test_stop_when_restarts_are_exhausted_ends_only_that_child() -> None:
    always = Child(crashes=10**9)
    sibling = Child()
    policy = RestartPolicy(max_restarts=2, window_seconds=60.0, exhausted=Decision.STOP)
    async with open_supervisor("sup") as supervisor:
        await supervisor.start("sibling", sibling)
        await supervisor.start("always", always, policy=policy)
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        # Two restarts are allowed; the third crash gets the `exhausted` decision.
        assert always.attempts == 3
        assert (stats.children, stats.crashes, stats.restarts, stats.stops) == (1, 3, 2, 1)
        assert sibling.running
        assert sibling.attempts == 1
        supervisor.cancel()


async def test_max_restarts_zero_applies_the_exhausted_decision_on_the_first_crash() -> None:
    child = Child(crashes=1)
    policy = RestartPolicy(max_restarts=0, exhausted=Decision.STOP)
    async with open_supervisor("sup") as supervisor:
        await supervisor.start("once", child, policy=policy)
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
    assert child.attempts == 1
    assert (stats.children, stats.crashes, stats.restarts, stats.stops) == (0, 1, 0, 1)


async def test_escalate_when_restarts_are_exhausted_raises_out_of_the_supervisor() -> None:
    always = Child(crashes=10**9)
    sibling = Child()
    policy = RestartPolicy(max_restarts=1, window_seconds=60.0, exhausted=Decision.ESCALATE)
    supervisor: Supervisor | None = None
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_supervisor("sup") as supervisor:
            await supervisor.start("sibling", sibling)
            await supervisor.start("always", always, policy=policy)
            await trio.sleep_forever()
    assert info.group_contains(Boom, match="crash 2")
    assert always.attempts == 2
    assert supervisor is not None
    stats = supervisor.statistics()
    assert (stats.children, stats.crashes, stats.restarts, stats.stops) == (0, 2, 1, 0)
    # Escalation cancels the siblings as well.
    assert not sibling.running


async def test_restarts_outside_the_window_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts = 0

    async def slow_crasher(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal attempts
        attempts += 1
        task_status.started()
        await trio.sleep(11.0)
        raise Boom(f"crash {attempts}")

    policy = RestartPolicy(max_restarts=1, window_seconds=10.0, exhausted=Decision.ESCALATE)
    async with open_supervisor("sup") as supervisor:
        await supervisor.start("slow", slow_crasher, policy=policy)
        await trio.sleep(11.0 * 5 + 1.0)
        stats = supervisor.statistics()
        assert (stats.children, stats.crashes, stats.restarts) == (1, 5, 5)
        supervisor.cancel()


async def test_on_crash_receives_name_exception_and_decision() -> None:
    child = Child(crashes=10**9)
    policy = RestartPolicy(max_restarts=2, window_seconds=60.0, exhausted=Decision.STOP)
    calls: list[tuple[str, BaseException, Decision]] = []

    def on_crash(name: str, error: BaseException, decision: Decision) -> None:
        calls.append((name, error, decision))

    async with open_supervisor("sup", on_crash=on_crash) as supervisor:
        await supervisor.start("worker", child, policy=policy)
        await trio.testing.wait_all_tasks_blocked()
    assert [name for name, _, _ in calls] == ["worker"] * 3
    assert [str(error) for _, error, _ in calls] == ["crash 1", "crash 2", "crash 3"]
    assert all(isinstance(error, Boom) for _, error, _ in calls)
    assert [decision for _, _, decision in calls] == [
        Decision.RESTART,
        Decision.RESTART,
        Decision.STOP,
    ]


async def test_on_crash_sees_escalate_before_the_error_leaves_the_supervisor() -> None:
    child = Child(crashes=10**9)
    policy = RestartPolicy(max_restarts=0, exhausted=Decision.ESCALATE)
    calls: list[tuple[str, BaseException, Decision]] = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_supervisor("sup", on_crash=lambda *a: calls.append(a)) as supervisor:
            await supervisor.start("fatal", child, policy=policy)
            await trio.sleep_forever()
    assert len(calls) == 1
    name, error, decision = calls[0]
    assert (name, decision) == ("fatal", Decision.ESCALATE)
    assert info.group_contains(Boom)
    assert error in info.value.exceptions
