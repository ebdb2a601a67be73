"""The processes a benchmark measures: the server under test started as a subprocess (pinned
to one core), CPU and RSS accounting for it and for the load generator, and the host facts
every result file records (git commit, cores, file descriptor limits).

Shared by `python -m benchmarks` (the suite), `benchmarks.quick` and `benchmarks.soak`.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_LINE = re.compile(r"broker listening on (http://\S+) (ws://\S+)")
# The broker's own server command; other targets (benchmarks.baselines) print the same line.
BROKER_ARGV = ["-m", "gateways", "serve", "--port", "0", "--ws-port", "0"]
# Lines of the server's stderr worth reporting.
PROBLEM_MARKERS = ("WARNING", "ERROR", "CRITICAL", "Traceback", "slow consumer")


# -- CPU and memory accounting -------------------------------------------------------------


def own_cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of its children already waited
    for (a publisher subprocess counts as load generator)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def proc_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of process `pid` from /proc (all threads), or None if unknown."""
    if pid is None:
        return None
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime (14) + stime (15)


def rss_bytes(pid: int | None) -> float | None:
    """Resident set size of process `pid` from /proc, or None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class CpuMeter:
    """Wall time and both processes' CPU seconds over a window."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self._start: tuple[float, float, float | None] = (0.0, 0.0, None)

    def start(self) -> None:
        self._start = (time.perf_counter(), own_cpu_seconds(), proc_cpu_seconds(self.broker_pid))

    def stop(self) -> dict[str, float | None]:
        wall0, gen0, broker0 = self._start
        wall = time.perf_counter() - wall0
        gen = own_cpu_seconds() - gen0
        broker1 = proc_cpu_seconds(self.broker_pid)
        broker = None if broker0 is None or broker1 is None else broker1 - broker0
        return {
            "window_s": wall,
            "gen_cpu_s": gen,
            "gen_cpu_pct": 100.0 * gen / wall if wall > 0 else None,
            "broker_cpu_s": broker,
            "broker_cpu_pct": None if broker is None or wall <= 0 else 100.0 * broker / wall,
        }


# -- host facts ----------------------------------------------------------------------------


def pick_cores(pin: bool) -> tuple[list[int], int | None, int | None]:
    """(cores available, the broker's core, the load generator's core): the first and the
    last core when pinning is wanted and there are two or more, else no pinning."""
    available = sorted(os.sched_getaffinity(0))
    if pin and len(available) >= 2:
        return available, available[0], available[-1]
    return available, None, None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it);
    return (soft, hard) after the attempt."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has uncommitted changes), or Nones outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head, bool(status.strip())


# -- the server subprocess -----------------------------------------------------------------


class BrokerProcess:
    """`python <argv>` (the broker's `serve` by default), optionally pinned to one core.

    Blocks until the server prints its ready line (`broker listening on http://... ws://...`)
    or `startup_timeout` passes; `stop()` sends SIGTERM and reports how it went.
    """

    def __init__(self, core: int | None, startup_timeout: float,
                 argv: Sequence[str] = BROKER_ARGV) -> None:
        self.core = core
        self.argv = list(argv)
        stderr_fd, self.stderr_path = tempfile.mkstemp(prefix="broker-", suffix=".log")
        preexec: Callable[[], None] | None = None
        if core is not None:
            def preexec() -> None:
                os.sched_setaffinity(0, {core})

        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_fd,
            preexec_fn=preexec,
        )
        os.close(stderr_fd)  # the child has its own copy
        self.pid = self.proc.pid
        self.stdout_rest = bytearray()
        try:
            line = self._read_ready_line(startup_timeout)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.startup_seconds = time.perf_counter() - self.started
        match = READY_LINE.search(line)
        if match is None:
            self.stop()
            raise RuntimeError(f"unexpected first line from the server: {line!r}")
        self.http_url, self.ws_url = match.group(1), match.group(2)
        # Keep draining stdout so the server can never block on a full pipe.
        self._drainer = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drainer.start()

    def _read_ready_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"server printed no ready line within {timeout}s; "
                        f"stderr: {self.stderr_text()[-2000:]}"
                    )
                if not selector.select(left):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"server exited ({self.proc.wait()}) before listening; "
                        f"stderr: {self.stderr_text()[-2000:]}"
                    )
                buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        self.stdout_rest += rest
        return line.decode(errors="replace")

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.stdout_rest += chunk

    def affinity(self) -> list[int] | None:
        try:
            return sorted(os.sched_getaffinity(self.pid))
        except OSError:
            return None

    def stderr_text(self) -> str:
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> dict[str, Any]:
        """SIGTERM, wait for a clean exit; report exit code, time taken and stderr problems."""
        report: dict[str, Any] = {"pid": self.pid}
        if self.proc.poll() is not None:
            report["exited_early"] = True
        else:
            self.proc.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        try:
            report["exit_code"] = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            report["exit_code"] = None
            report["hung_on_sigterm"] = True
            self.proc.kill()
            self.proc.wait()
        report["stop_seconds"] = round(time.perf_counter() - started, 3)
        lines = self.stderr_text().splitlines()
        problems = [line for line in lines if any(m in line for m in PROBLEM_MARKERS)]
        report["stderr_lines"] = len(lines)
        report["stderr_problems"] = problems[:30]
        report["stderr_problem_count"] = len(problems)
        if problems or report.get("exit_code") != 0:
            report["stderr_log"] = self.stderr_path  # kept for a look
        else:
            Path(self.stderr_path).unlink(missing_ok=True)
        return report


def stop_problems(report: dict[str, Any], who: str = "broker") -> list[str]:
    """What a `BrokerProcess.stop()` report says went wrong with the exit itself."""
    problems = []
    if report.get("hung_on_sigterm"):
        problems.append(f"{who} did not exit within 15 s of SIGTERM (killed)")
    elif report.get("exit_code") not in (0, None):
        problems.append(f"{who} exit code {report['exit_code']} after SIGTERM")
    if report.get("exited_early"):
        problems.append(f"{who} exited before it was stopped")
    return problems
