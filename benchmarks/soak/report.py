"""The soak's report: delivered/expected per policy, each stalled subscriber's fate, RSS and
tasks over time, and the memory verdict; returns the PROBLEMS list.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from ..process import (
    PROBLEM_MARKERS,
    stop_problems,
)
from .load import Soak
from .state import (
    EXPECTED_LOG,
    FLAT_GROWTH,
    MB,
    Family,
    Sample,
    _expected,
    _fmt,
    _mb,
)

# -- report --------------------------------------------------------------------------------


def report_family(soak: Soak, family: Family, problems: list[str]) -> list[str]:
    """Print one policy's section; return its row of the summary table."""
    args = soak.args
    topics = family.topics
    where = f"{family.policy}"
    print(f"\n{family.policy}: topics {family.pattern} ({len(topics)}), "
          f"{args.healthy} healthy subscribers per topic")
    # publishers
    for topic in topics:
        pub = topic.pub
        refused = sum(pub.refused.values())
        codes = ", ".join(f"{k} {v}" for k, v in sorted(pub.refused.items())) or "-"
        broker_next = topic.broker_next_offset
        print(
            f"  {topic.name.rsplit('.', 1)[1]}: published (accepted) {pub.accepted} of "
            f"{pub.attempted} in {pub.requests} POSTs | refused (503) {refused} [{codes}] "
            f"| unknown {pub.unknown} "
            f"| late ticks {pub.late} | slowest answer {pub.max_latency:.2f}s "
            f"| broker next_offset {_fmt(broker_next)}"
        )
        if broker_next is not None and broker_next != topic.next_offset and not pub.unknown:
            problems.append(f"{where} {topic.name}: 202 answers say next offset "
                            f"{topic.next_offset}, the broker says {broker_next}")
        if pub.offset_errors:
            problems.append(f"{where} {topic.name}: {pub.offset_errors} accepted offsets out "
                            "of sequence")
        for error, times in pub.errors.items():
            print(f"      publisher error x{times}: {error}")
        if pub.unknown:
            problems.append(f"{where} {topic.name}: {pub.unknown} messages of unanswered "
                            "requests (fate unknown)")
        if refused and family.key != "block":
            problems.append(f"{where} {topic.name}: {refused} publishes refused on a policy "
                            "that never waits for subscribers")
    # healthy subscribers
    expected = delivered = received = skipped = gaps = 0
    bad: list[str] = []
    subs = 0
    for topic in topics:
        want = _expected(topic)
        for sub in topic.healthy:
            subs += 1
            expected += want
            delivered += min(sub.accounted, want)
            received += sub.received
            skipped += sub.skipped
            gaps += sub.gaps
            if not sub.whole(want) or sub.closed_early or sub.others_seen:
                bad.append(
                    f"{sub.path.split('client=')[-1]}: received {sub.received} + skipped "
                    f"{sub.skipped} of {want}, offsets {sub.first_offset}..{sub.last_offset}, "
                    f"out of order {sub.out_of_order}, gaps {sub.gaps}, closed by the broker "
                    f"{sub.close_code or 'eof' if sub.closed_early else '-'}, other frames "
                    f"{sub.others[:2]}"
                )
    wanted = args.topics * args.healthy
    pct = 100.0 * delivered / expected if expected else 100.0
    extra = f" (received {received} + skipped in gap frames {skipped})" if skipped else ""
    print(f"  healthy ({subs}/{wanted} connected): delivered/expected {delivered}/{expected} "
          f"= {pct:.2f}%{extra}, in order, {len(bad)} incomplete")
    if subs < wanted:
        problems.append(f"{where}: only {subs}/{wanted} healthy subscribers connected")
    for line in bad:
        print(f"      INCOMPLETE {line}")
    if bad:
        problems.append(f"{where}: {len(bad)} healthy subscribers lost messages or were closed "
                        f"(delivered {delivered}/{expected})")
    if gaps and family.key != "drop":
        problems.append(f"{where}: gap frames on a lossless policy")
    # churn
    churn = family.churn
    closed = ", ".join(f"{code} x{n}" for code, n in sorted(churn.closed_by_broker.items()))
    timeouts = ", ".join(f"{t.rsplit('.', 1)[1].replace('*', 'wildcard')} {n}"
                         for t, n in sorted(churn.timeouts_by_topic.items()))
    print(
        f"  churn: {churn.cycles} connect/subscribe/read/leave cycles"
        f"{f' ({churn.wildcard_cycles} on the wildcard)' if churn.wildcard_cycles else ''}, "
        f"{churn.subscribed} subscribed, {churn.timeouts} not subscribed within "
        f"{args.churn_timeout:g}s{f' [{timeouts}]' if timeouts else ''}, {churn.messages} "
        f"messages read, {churn.order_errors} out of order"
        f"{f', closed by the broker: {closed}' if closed else ''}"
    )
    for error, times in churn.errors.items():
        print(f"      churn error x{times}: {error}")
    if churn.order_errors:
        problems.append(f"{where}: churn subscribers saw {churn.order_errors} messages out of "
                        "order")
    stalled_topic = topics[0].name
    blocked_ok = family.key == "block" and set(churn.timeouts_by_topic) <= {stalled_topic}
    if churn.timeouts and not blocked_ok:
        problems.append(f"{where}: {churn.timeouts} churn subscribes not answered within "
                        f"{args.churn_timeout:g}s [{timeouts}]")
    # the stalled subscriber
    stalled = report_stalled(family, problems)
    accepted = sum(t.pub.accepted for t in topics)
    refused = sum(sum(t.pub.refused.values()) for t in topics)
    return [family.policy, str(accepted), str(refused), f"{delivered}/{expected}",
            f"{pct:.2f}%", stalled]


def report_stalled(family: Family, problems: list[str]) -> str:
    """Print what happened to the stalled subscriber; return it in a few words."""
    stalled = family.stalled
    where = family.policy
    if stalled is None or not stalled.subscribed:
        print("  stalled: never subscribed")
        problems.append(f"{where}: the stalled subscriber never subscribed")
        return "never subscribed"
    reader = stalled.reader
    offsets = (f"offsets {reader.first_offset}..{reader.last_offset}"
               if reader.received else "no messages")
    order = "in order" if reader.out_of_order == reader.gaps else (
        f"{reader.out_of_order - reader.gaps} out of order")
    ended = (f"close {reader.close_code} {reader.close_reason!r}" if reader.close_code
             else "end of stream without a close frame" if reader.eof else "still open")
    t0_refused = sum(family.topics[0].pub.refused.values())
    if stalled.gone_at is not None:
        print(f"  stalled (t0, never read): dropped by the broker at {stalled.gone_at:.1f}s; "
              f"then read {reader.received} messages ({offsets}, {order}), {ended}")
        if family.key != "disconnect":
            problems.append(f"{where}: the stalled subscriber was disconnected ({ended})")
        elif reader.close_code != 4008:
            problems.append(f"{where}: the stalled subscriber was dropped without a 4008 "
                            f"close ({ended})")
        if reader.out_of_order != reader.gaps:
            problems.append(f"{where}: the stalled subscriber's prefix was out of order")
        how = f"closed {reader.close_code}" if reader.close_code else "dropped without close"
        return f"{how} at {stalled.gone_at:.1f}s"
    expected = stalled.expected
    whole = expected is not None and reader.whole(expected)
    if family.key == "disconnect":
        print(f"  stalled (t0, never read): NOT disconnected during the run; at the end it "
              f"read {reader.received}/{expected} ({offsets}, {order})")
        problems.append(f"{where}: the stalled subscriber was not disconnected (too little "
                        f"data to fill its outbox and socket buffers? raise --seconds, --rate "
                        f"or --payload-bytes)")
        return "not disconnected"
    kept = {True: "kept to the end", False: "NOT in presence at the end",
            None: "presence unknown at the end (query failed)"}[stalled.kept_to_end]
    if family.key == "drop":
        print(f"  stalled (t0, never read): {kept}, {reader.skipped} dropped (in {reader.gaps} "
              f"gap frames); reading at the end: received {reader.received} + skipped "
              f"{reader.skipped} = {reader.accounted}/{expected} offsets, {order}, "
              f"{'every offset accounted for' if whole else 'NOT every offset accounted for'}")
        if not whole:
            problems.append(f"{where}: the stalled subscriber's received + skipped does not "
                            f"account for every offset ({reader.accounted}/{expected})")
        if not reader.skipped:
            print("      (nothing dropped: the stall never filled the outbox)")
    else:
        print(f"  stalled (t0, never read): {kept}; publishers refused {t0_refused} messages "
              f"on t0; reading at the end: {reader.received}/{expected} messages, {order}, "
              f"{'nothing lost' if whole and not reader.gaps else 'INCOMPLETE'}")
        if not whole or reader.gaps:
            problems.append(f"{where}: the stalled subscriber did not get every accepted "
                            f"message once it read ({reader.received}/{expected})")
        if not t0_refused:
            print("      (no publish refused: the stall never filled outbox and mailbox)")
    if stalled.kept_to_end is False:
        problems.append(f"{where}: the stalled subscriber was not kept")
    for error in stalled.errors:
        print(f"      stalled error: {error}")
    kept = "kept" if stalled.kept_to_end else kept
    if family.key == "drop":
        return f"{kept}, {reader.skipped} dropped, all accounted" if whole else (
            f"{kept}, NOT all accounted")
    return f"{kept}, publishers refused {t0_refused}, nothing lost" if whole else (
        f"{kept}, INCOMPLETE")


def memory_verdict(soak: Soak, problems: list[str]) -> None:
    seconds = soak.args.seconds
    samples = [s for s in soak.samples if s.t <= seconds + 0.5]
    print(f"\nRSS and tasks over time (samples every {soak.args.sample_interval:g}s; "
          f"rows every {soak.args.progress_interval:g}s)")
    print(f"{'t s':>6} {'RSS MB':>7} {'tasks':>6} {'conns':>6} {'published':>10} "
          f"{'delivered':>10} {'dropped':>8} {'mailbox max':>11}")
    rows: list[Sample] = []
    due = 0.0
    for s in samples:
        if s.t >= due - soak.args.sample_interval / 2:
            rows.append(s)
            while due <= s.t + soak.args.sample_interval / 2:
                due += soak.args.progress_interval
    if samples and samples[-1] is not rows[-1]:
        rows.append(samples[-1])
    for s in rows:
        print(f"{s.t:6.1f} {_mb(s.rss):>7} {_fmt(s.tasks):>6} {_fmt(s.connections):>6} "
              f"{_fmt(s.published):>10} {_fmt(s.delivered):>10} {_fmt(s.dropped):>8} "
              f"{_fmt(s.mailbox_max):>11}")
    third = seconds / 3.0
    middle = [s for s in samples if third <= s.t < 2 * third]
    last = [s for s in samples if s.t >= 2 * third]

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    rss_mid, rss_last = mean([s.rss for s in middle]), mean([s.rss for s in last])
    tasks_mid, tasks_last = mean([s.tasks for s in middle]), mean([s.tasks for s in last])
    if rss_mid and rss_last:
        growth = rss_last / rss_mid - 1.0
        verdict = "flat" if growth < FLAT_GROWTH else "GROWING"
        print(f"\nmemory: mean RSS {rss_mid / MB:.1f} MB over {third:.0f}-{2 * third:.0f}s, "
              f"{rss_last / MB:.1f} MB over {2 * third:.0f}-{seconds:g}s: "
              f"{growth * 100:+.1f}% => {verdict} (first third is warm-up; flat: < "
              f"{FLAT_GROWTH * 100:.0f}%)")
        if verdict != "flat":
            problems.append(f"memory grew {growth * 100:+.1f}% from the middle to the last "
                            "third of the run")
    else:
        print("\nmemory: not enough RSS samples for a verdict")
        problems.append("no memory verdict: RSS samples missing")
    if tasks_mid and tasks_last:
        print(f"tasks: mean {tasks_mid:.0f} over the middle third, {tasks_last:.0f} over the "
              f"last ({(tasks_last / tasks_mid - 1) * 100:+.1f}%)")
    before, after = soak.idle_before, soak.idle_after
    if before and after:
        print(f"idle, before connecting: {_fmt(before.tasks)} tasks, {_fmt(before.connections)}"
              f" connections, RSS {_mb(before.rss)} MB; after everything closed: "
              f"{_fmt(after.tasks)} tasks, {_fmt(after.connections)} connections, "
              f"RSS {_mb(after.rss)} MB")
        if after.connections:
            problems.append(f"{after.connections:.0f} connections still open at the end")
        if before.tasks is not None and after.tasks is not None and after.tasks > before.tasks:
            print(f"      ({after.tasks - before.tasks:.0f} tasks more than before: idle topics "
                  "keep one actor task each until topic_idle_seconds)")


def report(soak: Soak, broker: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    args = soak.args
    problems: list[str] = []
    print(f"\nsoak: {args.seconds:g}s | python {meta['python']} | {meta['cpus']} cpus | commit "
          f"{meta['commit']} | broker pid {meta['broker_pid']} cores {meta['broker_cores']} | "
          f"load generator cores {meta['gen_cores']}")
    print(f"load: {args.rate:g} msg/s per policy in bulk POSTs of {args.batch} "
          f"({args.payload_bytes}-byte pad), {args.topics} topics per policy, {args.healthy} "
          f"healthy subscribers per topic, {args.churners} churners per policy, 1 stalled "
          f"subscriber per policy (SO_RCVBUF {args.stall_rcvbuf}); broker outbox_size "
          f"{meta['outbox_size']}, publish_timeout {meta['publish_timeout']}")
    rows = [report_family(soak, family, problems) for family in soak.families]
    print(f"\n{'policy':<12} {'published':>9} {'refused':>8} {'healthy delivered/expected':>27}"
          f" {'':>8}  stalled subscriber")
    for policy, accepted, refused, ratio, pct, stalled in rows:
        print(f"{policy:<12} {accepted:>9} {refused:>8} {ratio:>27} {pct:>8}  {stalled}")
    memory_verdict(soak, problems)
    cpu = soak.load_cpu
    if cpu:
        print(
            f"\nCPU over the {cpu['window_s']:.1f}s of load: load generator "
            f"{cpu['gen_cpu_s']:.1f}s ({_fmt(cpu['gen_cpu_pct'])}% of a core), broker "
            f"{_fmt(cpu['broker_cpu_s'], '.1f')}s ({_fmt(cpu['broker_cpu_pct'])}% of a core)"
        )
    if soak.samples:
        last = soak.samples[-1]
        gaps = sum(f.stalled.reader.skipped + sum(s.skipped for t in f.topics for s in t.healthy)
                   for f in soak.families if f.stalled)
        print(f"broker counters at the end of the load: published {_fmt(last.published)}, "
              f"delivered {_fmt(last.delivered)}, dropped {_fmt(last.dropped)} (gap frames "
              f"seen here: {gaps} skipped), slow-consumer disconnects {_fmt(last.disconnects)}")
    for name, status, took in soak.end_phase.get("final", []):
        if status != 202:
            print(f"final publish to {name}: {status or 'no answer'} after {took:.1f}s")
            problems.append(f"final publish to {name} after the release: "
                            f"{status or 'no answer'}")
    if "drain_s" in soak.end_phase:
        print(f"healthy subscribers caught up {soak.end_phase['drain_s']:.2f}s after the "
              "final publish")
    if soak.scrape_failures:
        print(f"GET /metrics failed or took over {args.scrape_timeout:g}s "
              f"{soak.scrape_failures} times")
        problems.append(f"GET /metrics failed or took over {args.scrape_timeout:g}s "
                        f"{soak.scrape_failures} times (a wedged broker?)")
    for error in soak.errors:
        print(f"error: {error}")
        problems.append(error)
    if not broker.get("external"):
        lines = broker.get("stderr_all", [])
        unexpected = [line for line in lines if any(m in line for m in PROBLEM_MARKERS)
                      and EXPECTED_LOG not in line]
        expected = sum(1 for line in lines if EXPECTED_LOG in line)
        print(f"broker: SIGTERM -> exit {broker.get('exit_code')} in "
              f"{broker.get('stop_seconds')}s; stderr: {expected} slow-consumer closes, "
              f"{len(unexpected)} other warning/error lines")
        for line in unexpected[:10]:
            print(f"      {line}")
        if unexpected:
            problems.append(f"broker stderr: {len(unexpected)} warning/error lines "
                            f"({broker.get('stderr_log')})")
        elif broker.get("stderr_log") and broker.get("exit_code") == 0:
            # BrokerProcess keeps the log for any "slow consumer" line; that one is ours.
            os.unlink(broker["stderr_log"])
        problems += stop_problems(broker)
    return problems
