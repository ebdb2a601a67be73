"""The benchmark suite: a --quick smoke run of every scenario against a broker it starts
(everything delivered, nothing failed, every output file written), `--compare` on two
synthetic result files, and the pure pieces (percentiles, medians, which way is better,
the rate schedule's accuracy, frame splitting). No assertion about speed."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from benchmarks import compare, results
from benchmarks.__main__ import main
from benchmarks.scenarios.e2e import split_frames
from benchmarks.scenarios.levels import degradation, levels_up_to
from benchmarks.scenarios.ws_publish import (
    WsPublisher,
    publish_all,
    publish_frames,
    publish_window,
)
from benchmarks.schedule import RateSchedule, accuracy_pct, achieved_rate, run_at_rate
from benchmarks.stats import direction, is_regression, latency_summary, median_of, percentile

REPO = Path(__file__).resolve().parents[2]  # tests/end_to_end/ -> the repository
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Every case a --quick run of the whole suite reports (idle is not part of --quick).
QUICK_CASES = {
    "single", "wrk", "ws-publish", "ws-publish-window", "bulk", "concurrent", "connect-50",
    "connect-200", "e2e",
    "e2e-lean", "broadcast", "fanout", "fanout-single", "sustained", "levels.minimal",
    "levels.light", "levels.low", "levels.medium", "levels.summary", "mixed", "mixed.register",
    "mixed.enumerate", "mixed.multicast",
}


# -- the smoke run -------------------------------------------------------------------------


@pytest.mark.slow  # every scenario, --quick (~26 s)
def test_quick_suite_completes_every_scenario_without_loss(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--runs", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [json_path] = tmp_path.glob("*.json")
    doc = json.loads(json_path.read_text())
    assert {"schema", "meta", "targets", "problems"} <= doc.keys()
    assert doc["problems"] == []
    meta = doc["meta"]
    for key in ("git_commit", "git_dirty", "python", "cpu_count", "pinning", "runs", "sizes"):
        assert key in meta
    assert meta["runs"] == 1 and meta["quick"] is True
    cases = doc["targets"]["broker"]["cases"]
    assert set(cases) == QUICK_CASES
    for name, case in cases.items():
        [run] = case["runs"]
        assert run.get("failures", 0) == 0, (name, run)
        assert run["errors"] == [], (name, run["errors"])
        if "expected" in run:
            assert run["expected"] > 0 and run["delivered"] == run["expected"], (name, run)
        assert "median" in case
    for timed in ("single", "ws-publish", "bulk", "concurrent", "connect-50", "e2e", "broadcast",
                  "fanout"):
        run = cases[timed]["runs"][0]
        assert run["requests"] > 0 and run["p99_ms"] is not None
        assert run["gen_cpu_pct"] is not None and run["broker_cpu_pct"] is not None
    for case in ("ws-publish", "ws-publish-window"):
        ws_publish = cases[case]["runs"][0]
        assert ws_publish["accepted"] == ws_publish["messages"] > 0
        assert ws_publish["last_offset"] == ws_publish["messages"] - 1
    assert cases["mixed.multicast"]["runs"][0]["targets"] > 0
    # `levels` reports RSS, so it ran on a freshly started server; the first one stopped
    # cleanly for it.
    server = doc["targets"]["broker"]["server"]
    [earlier] = server["restarted"]
    assert earlier["exit_code"] == 0 and earlier["pid"] == server["pid"]
    assert server["shutdown"]["pid"] != server["pid"]
    assert cases["mixed"]["runs"][0]["registered"] > 0
    markdown = json_path.with_suffix(".md").read_text()
    assert "| case | requests | failures | median ms |" in markdown
    assert "load levels" in markdown and "mixed workload" in markdown
    for png in ("latency", "levels"):
        image = tmp_path / f"{json_path.stem}-{png}.png"
        assert image.read_bytes().startswith(b"\x89PNG")


# -- --compare ------------------------------------------------------------------------------


def _doc(single_rate: float, p99: float, lost: int) -> dict[str, Any]:
    median = {"rate_per_s": single_rate, "p99_ms": p99, "requests": 100, "gen_cpu_pct": 50.0}
    return {"schema": 1, "meta": {}, "problems": [], "targets": {"broker": {"cases": {
        "single": {"runs": [], "median": median},
        "fanout": {"runs": [], "median": {"lost": lost, "deliveries_per_s": 1000.0}},
    }}}}


def test_compare_flags_only_figures_worse_beyond_ten_percent_in_their_direction() -> None:
    old, new = _doc(1000.0, 2.0, 0), _doc(850.0, 1.5, 0)
    changes = {c.figure: c for c in compare.compare(old, new)}
    assert changes["broker/single.rate_per_s"].regression  # 15% slower
    assert changes["broker/single.rate_per_s"].ratio == pytest.approx(0.85)
    assert not changes["broker/single.p99_ms"].regression  # lower latency is better
    assert not changes["broker/single.gen_cpu_pct"].regression  # information only
    assert not changes["broker/fanout.lost"].regression
    text = compare.render(list(changes.values()))
    assert "WORSE" in text and "1 worse by more than 10%" in text


def test_only_the_broker_regresses_and_its_figures_show_the_baselines_drift(
    tmp_path: Path,
) -> None:
    old, new = _doc(1000.0, 2.0, 0), _doc(1000.0, 2.0, 0)
    for doc, rate in ((old, 1000.0), (new, 700.0)):  # the baseline 30% slower this time
        doc["targets"]["fastapi"] = {"cases": {
            "single": {"runs": [], "median": {"rate_per_s": rate}}}}
    changes = {c.figure: c for c in compare.compare(old, new)}
    slower = changes["fastapi/single.rate_per_s"]
    assert slower.worse and not slower.regression  # its code did not change: drift
    assert changes["broker/single.rate_per_s"].drift == pytest.approx(0.7)
    assert changes["broker/single.p99_ms"].drift is None  # no baseline figure to match
    text = compare.render(list(changes.values()))
    assert "(drift)" in text and "0 worse by more than 10%; 1 baseline" in text
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(old))
    new_path.write_text(json.dumps(new))
    assert main(["--compare", str(old_path), "--against", str(new_path),
                 "--fail-on-regression"]) == 0


def test_compare_cli_exit_code_only_fails_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(_doc(1000.0, 2.0, 0)))
    new_path.write_text(json.dumps(_doc(1000.0, 3.0, 5)))  # p99 +50%, 5 lost
    changes = compare.compare(results.load(old_path), results.load(new_path))
    assert {c.figure for c in changes if c.regression} == {
        "broker/single.p99_ms", "broker/fanout.lost"}
    assert main(["--compare", str(old_path), "--against", str(new_path)]) == 0
    assert "broker/single.p99_ms" in capsys.readouterr().out
    assert main(["--compare", str(old_path), "--against", str(new_path),
                 "--fail-on-regression"]) == 1
    assert main(["--compare", str(old_path), "--against", str(old_path),
                 "--fail-on-regression"]) == 0
    with pytest.raises(SystemExit):
        main(["--fail-on-regression"])  # needs --compare
    with pytest.raises(SystemExit):
        main(["nonsense-scenario"])


# -- pure pieces ----------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.001, 0.003, 0.002])
    assert summary["min_ms"] == pytest.approx(1.0)
    assert summary["avg_ms"] == pytest.approx(2.0)
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["max_ms"] == pytest.approx(3.0)
    assert latency_summary([])["p99_ms"] is None


def test_median_of_sums_losses_so_one_bad_run_shows() -> None:
    runs = [{"rate_per_s": 10.0, "failures": 0, "lost": 0, "run": 1, "errors": []},
            {"rate_per_s": 30.0, "failures": 2, "lost": 5, "run": 2, "errors": ["x"]},
            {"rate_per_s": 20.0, "failures": 0, "lost": 0, "run": 3, "errors": []}]
    median = median_of(runs)
    assert median == {"rate_per_s": 20.0, "failures": 2.0, "lost": 5.0}


def test_direction_and_regression_follow_figure_names() -> None:
    assert direction("broker/single.rate_per_s") == "higher"
    assert direction("broker/e2e.p50_ms") == "lower"
    assert direction("broker/fanout.delivered_pct") == "higher"
    assert direction("broker/levels.summary.p99_degradation_pct") == "lower"
    assert direction("broker/mixed.rate_accuracy_pct") is None
    assert direction("broker/mixed.achieved_rate_per_s") is None
    assert direction("broker/single.gen_cpu_pct") is None
    assert is_regression("x.rate_per_s", 100.0, 89.0)
    assert not is_regression("x.rate_per_s", 100.0, 91.0)
    assert is_regression("x.p99_ms", 1.0, 1.2)
    assert not is_regression("x.p99_ms", 1.0, 0.5)
    assert is_regression("x.failures", 0.0, 1.0)
    # Percentages move in points: -26% -> -21% is 5 points, not "19% worse".
    assert not is_regression("x.deliveries_degradation_pct", -26.0, -21.0)
    assert is_regression("x.deliveries_degradation_pct", 5.0, 16.0)
    assert is_regression("x.delivered_pct", 100.0, 89.0)
    assert not is_regression("x.delivered_pct", 100.0, 91.0)
    assert not is_regression("x.p99_degradation_pct", 79_080.0, 82_710.0)  # 1.05x
    assert is_regression("x.p99_degradation_pct", 79_080.0, 90_000.0)


def test_rate_schedule_deadlines_are_absolute() -> None:
    schedule = RateSchedule(rate=100.0, duration=2.0, start=10.0)
    assert schedule.total == 200
    assert schedule.deadline(0) == 10.0
    assert schedule.deadline(150) == pytest.approx(11.5)
    assert schedule.due_by(9.0) == 0
    assert schedule.due_by(10.0) == 1
    assert schedule.due_by(10.0355) == 4  # ops 0..3 are due by then
    assert schedule.due_by(99.0) == 200


async def test_run_at_rate_stays_within_two_percent_despite_late_wake_ups(
    autojump_clock: trio.testing.MockClock,
) -> None:
    jitter = random.Random(5)

    def late_clock() -> float:  # every wake-up observed up to 30 ms late
        return trio.current_time() + jitter.uniform(0.0, 0.03)

    started: list[int] = []
    schedule = RateSchedule(rate=100.0, duration=30.0, start=trio.current_time())
    launched = await run_at_rate(schedule, started.append, clock=late_clock)
    assert started == list(range(3000))  # each operation once, in order
    achieved = achieved_rate(len(launched), launched[0], launched[-1], 100.0)
    assert 98.0 <= accuracy_pct(achieved, 100.0) <= 102.0


async def test_run_at_rate_catches_up_after_a_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    schedule = RateSchedule(rate=10.0, duration=2.0, start=trio.current_time())
    stalled = False

    async def launch(index: int) -> None:
        nonlocal stalled
        if index == 3 and not stalled:
            stalled = True
            await trio.sleep(0.55)  # five deadlines pass meanwhile

    launched = await run_at_rate(schedule, launch)
    assert len(launched) == 20
    assert launched[-1] - launched[0] == pytest.approx(1.9)  # no drift after the stall


def answering_once(answers: list[bytes]) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A server that accepts the WebSocket handshake, reads once, writes `answers` (text
    frames) in one write, then answers nothing more."""
    async def serve(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
        key = head.split(b"sec-websocket-key: ")[1].split(b"\r\n")[0]
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                              b"connection: Upgrade\r\nsec-websocket-accept: %s\r\n\r\n"
                              % accept)
        await stream.receive_some()  # the first publishes
        await stream.send_all(b"".join(bytes([0x81, len(a)]) + a for a in answers))
        await trio.sleep_forever()

    return serve


async def test_ws_publisher_counts_unanswered_publishes_instead_of_hanging() -> None:
    """The server answers the first publish and then nothing: the rest are failures once
    the phase timeout passes."""
    serve = answering_once([b'{"op":"ok","id":7,"topic":"t","offset":0}'])
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        publisher = WsPublisher("127.0.0.1", listener.socket.getsockname()[1], "/v1/ws")
        await publisher.connect()
        out, misplaced, last = await publish_all(publisher, publish_frames("t", 3, 7), 7, 0.5)
        with trio.move_on_after(0.2):  # the server never answers the close either
            await publisher.close()
        nursery.cancel_scope.cancel()
    assert publisher.sock is None  # closed even though the closing handshake timed out
    assert (out.accepted, out.failures, misplaced, last) == (1, 2, 0, 0)
    assert "2 publishes not answered within 0.5s" in out.errors


async def test_windowed_publishes_match_answers_by_id_in_any_order() -> None:
    """Answers out of order, one with an id never sent, then silence: matched by id, the
    stray one counted, the unanswered ones failures after the timeout."""
    serve = answering_once([b'{"op":"ok","id":11,"topic":"t","offset":1}',
                            b'{"op":"ok","id":99,"topic":"t","offset":5}',
                            b'{"op":"ok","id":10,"topic":"t","offset":0}'])
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        publisher = WsPublisher("127.0.0.1", listener.socket.getsockname()[1], "/v1/ws")
        await publisher.connect()
        out, misplaced, last = await publish_window(
            publisher, publish_frames("t", 5, 10), 10, window=3, timeout=0.5)
        nursery.cancel_scope.cancel()
    assert (out.accepted, out.failures, misplaced, last) == (2, 3, 0, 1)
    assert out.requests == 5  # the two answers freed two slots: all five were sent
    assert publisher.stray == 1
    assert "3 publishes not answered within 0.5s" in out.errors


def test_split_frames_keeps_a_partial_frame_for_later() -> None:
    one = bytes([0x81, 3]) + b"abc"
    long_payload = b"x" * 300
    two = bytes([0x81, 126]) + len(long_payload).to_bytes(2, "big") + long_payload
    buf = bytearray(one + two + two[:10])
    assert split_frames(buf) == [(1, b"abc"), (1, long_payload)]
    assert bytes(buf) == two[:10]
    buf += two[10:]
    assert split_frames(buf) == [(1, long_payload)] and not buf


def test_levels_ladder_and_degradation() -> None:
    assert [level.name for level in levels_up_to("medium")] == [
        "minimal", "light", "low", "medium"]
    assert levels_up_to("max")[-1].connections == 10000
    assert degradation(100.0, 80.0, higher_is_better=True) == pytest.approx(20.0)
    assert degradation(1.0, 1.5, higher_is_better=False) == pytest.approx(50.0)
    assert degradation(0.0, 1.0, higher_is_better=True) is None
