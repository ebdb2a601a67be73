"""What a person reads after a suite run: a Markdown report (Locust-like tables per target,
the load ladder, the mixed workload, broker/baseline ratios, problems) and PNG plots
(latency percentiles per case; deliveries/s and p99 against connections for the ladder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Figures shown side by side when two targets ran, with which way is better.
RATIO_FIGURES = ("rate_per_s", "deliveries_per_s", "p50_ms", "p99_ms")


def _fmt(value: Any, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return format(value, ".2f" if value < 100 else ".0f")


def _delivered(m: dict[str, Any]) -> str:
    if "expected" not in m:
        return ""
    pct = m.get("delivered_pct")
    return f"{m.get('delivered', 0):.0f}/{m['expected']:.0f}" + (
        f" ({pct:.1f}%)" if isinstance(pct, int | float) else "")


def summary_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    """Locust-like: one row per case, from the medians (failures summed over runs)."""
    lines = [
        "| case | requests | failures | median ms | p95 ms | p99 ms | avg ms | min ms | max ms "
        "| rate/s | delivered/expected | gen CPU % | server CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, data in cases.items():
        if case.startswith("levels.") or case == "mixed" or case.startswith("mixed."):
            continue
        m = data["median"]
        if not m:
            lines.append(f"| {case} | n/a | | | | | | | | | "
                         f"{data['runs'][0].get('na', '')} | | |")
            continue
        lines.append(
            f"| {case} | {_fmt(m.get('requests'))} | {_fmt(m.get('failures'))} "
            f"| {_ms(m.get('p50_ms'))} | {_ms(m.get('p95_ms'))} | {_ms(m.get('p99_ms'))} "
            f"| {_ms(m.get('avg_ms'))} | {_ms(m.get('min_ms'))} | {_ms(m.get('max_ms'))} "
            f"| {_fmt(m.get('rate_per_s'))} | {_delivered(m)} "
            f"| {_fmt(m.get('gen_cpu_pct'))} | {_fmt(m.get('broker_cpu_pct'))} |")
    return lines


def levels_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    rows = [(c[len("levels."):], d["median"]) for c, d in cases.items()
            if c.startswith("levels.") and c != "levels.summary"]
    if not rows:
        return []
    lines = [
        "| level | connections | conn/s | connect p99 ms | published | messages/s | deliveries/s "
        "| p95 ms | p99 ms | delivered/expected | server RSS MB | gen CPU % | server CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {_fmt(m.get('connections'))} | {_fmt(m.get('connect_per_s'))} "
            f"| {_ms(m.get('connect_p99_ms'))} "
            f"| {_fmt(m.get('published'))}/{_fmt(m.get('planned'))} "
            f"| {_fmt(m.get('messages_per_s'))} "
            f"| {_fmt(m.get('deliveries_per_s'))} | {_ms(m.get('p95_ms'))} "
            f"| {_ms(m.get('p99_ms'))} | {_delivered(m)} | {_fmt(m.get('rss_mb'))} "
            f"| {_fmt(m.get('gen_cpu_pct'))} | {_fmt(m.get('broker_cpu_pct'))} |")
    summary = cases.get("levels.summary", {}).get("median", {})
    if summary:
        lines.append("")
        lines.append(
            f"Degradation first -> last level (positive = worse): deliveries/s "
            f"{_fmt(summary.get('deliveries_degradation_pct'), '.1f')}%, p99 "
            f"{_fmt(summary.get('p99_degradation_pct'), '.1f')}%, connections/s "
            f"{_fmt(summary.get('connect_degradation_pct'), '.1f')}%.")
    return lines


def mixed_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    if "mixed" not in cases:
        return []
    lines = [
        "| operation | count | failures | success % | min ms | avg ms | p50 ms | p95 ms "
        "| p99 ms | max ms | delivered/targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op in ("register", "enumerate", "multicast"):
        data = cases.get(f"mixed.{op}")
        if data is None:
            continue
        m = data["median"]
        if not m:
            lines.append(f"| {op} | n/a | | | | | | | | | {data['runs'][0].get('na', '')} |")
            continue
        lines.append(
            f"| {op} | {_fmt(m.get('requests'))} | {_fmt(m.get('failures'))} "
            f"| {_fmt(m.get('success_pct'), '.1f')} | {_ms(m.get('min_ms'))} "
            f"| {_ms(m.get('avg_ms'))} | {_ms(m.get('p50_ms'))} | {_ms(m.get('p95_ms'))} "
            f"| {_ms(m.get('p99_ms'))} | {_ms(m.get('max_ms'))} | {_delivered(m)} |")
    m = cases["mixed"]["median"]
    lines.append("")
    lines.append(
        f"Target {_fmt(m.get('target_rate_per_s'))} ops/s, achieved "
        f"{_fmt(m.get('achieved_rate_per_s'), '.2f')} ops/s "
        f"({_fmt(m.get('rate_accuracy_pct'), '.1f')}% of target), "
        f"{_fmt(m.get('registered'))} connections registered at the end; "
        f"generator CPU {_fmt(m.get('gen_cpu_pct'))}%, server CPU "
        f"{_fmt(m.get('broker_cpu_pct'))}%.")
    return lines


def ratio_table(targets: dict[str, dict[str, Any]], base: str, other: str) -> list[str]:
    lines = [f"| case | figure | {base} | {other} | {base}/{other} |",
             "|---|---|---:|---:|---:|"]
    for case, data in targets[base]["cases"].items():
        theirs = targets[other]["cases"].get(case, {}).get("median", {})
        for figure in RATIO_FIGURES:
            mine = data["median"].get(figure)
            if not isinstance(mine, int | float):
                continue
            value = theirs.get(figure)
            if not isinstance(value, int | float):
                lines.append(f"| {case} | {figure} | {_fmt(mine, '.4g')} | n/a | n/a |")
                continue
            ratio = mine / value if value else None
            lines.append(f"| {case} | {figure} | {_fmt(mine, '.4g')} | {_fmt(value, '.4g')} "
                         f"| {_fmt(ratio, '.2f')} |")
    lines.append("")
    lines.append("Rates: a ratio above 1 means the broker is faster; latencies (`_ms`): "
                 "below 1 means the broker is faster.")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    pin = meta["pinning"]
    out = [
        f"# Benchmark suite results {meta['timestamp']}",
        "",
        f"- commit `{(meta['git_commit'] or '?')[:12]}`"
        f"{' (dirty work tree)' if meta['git_dirty'] else ''}, Python {meta['python']} "
        f"({meta['implementation']}), {meta['cpu_count']} CPUs, {meta['platform']}",
        f"- server pinned to core {pin.get('server_core')}, load generator to core "
        f"{pin.get('generator_core')}; RLIMIT_NOFILE {pin.get('nofile')}",
        f"- runs per scenario: {meta['runs']} (figures are medians; failures and losses "
        f"are totals over runs){'; --quick sizes' if meta['quick'] else ''}",
        "- latency: per request for publishes (per batch for bulk, publish op -> its ok for "
        "ws-publish), connect+subscribe+ping "
        "for connect, publish-to-receive for e2e, first publish -> subscriber complete for "
        "fan-out cases and levels",
        "- gen CPU % / server CPU %: CPU time of the load generator (with its publisher "
        "subprocesses) / the server over the case's wall time (100% = one core busy)",
    ]
    for target, entry in doc["targets"].items():
        server = entry.get("server", {})
        out += ["", f"## {target}", "",
                f"Server: pid {server.get('pid')}, cores {server.get('cores')}, "
                f"{'external' if server.get('external') else 'started by the suite'}.", ""]
        out += summary_table(entry["cases"])
        levels = levels_table(entry["cases"])
        if levels:
            out += ["", f"### {target}: load levels", "", *levels]
        mixed = mixed_table(entry["cases"])
        if mixed:
            out += ["", f"### {target}: mixed workload", "", *mixed]
    names = list(doc["targets"])
    if len(names) >= 2:
        out += ["", f"## {names[0]} / {names[1]}", ""]
        out += ratio_table(doc["targets"], names[0], names[1])
    out += ["", "## Problems", ""]
    out += [f"- {p}" for p in doc["problems"]] or ["none: every case delivered everything "
                                                  "with no failures"]
    return "\n".join(out) + "\n"


def plot(doc: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """latency.png and levels.png (when levels ran); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    targets = doc["targets"]
    fig, axes = plt.subplots(len(targets), 1, figsize=(12, 4.5 * len(targets)), squeeze=False)
    for axis, (target, entry) in zip(axes[:, 0], targets.items(), strict=True):
        cases = [(c, d["median"]) for c, d in entry["cases"].items()
                 if isinstance(d["median"].get("p50_ms"), int | float)]
        xs = range(len(cases))
        for offset, (pct, colour) in enumerate((("p50", "#4c72b0"), ("p95", "#dd8452"),
                                                 ("p99", "#c44e52"))):
            values = [max(m.get(f"{pct}_ms") or 0.0, 1e-3) for _, m in cases]
            axis.bar([x + (offset - 1) * 0.27 for x in xs], values, 0.27, label=pct,
                     color=colour)
        axis.set_xticks(list(xs), [c for c, _ in cases], rotation=35, ha="right", fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("latency ms (log)")
        axis.set_title(f"{target}: latency percentiles per case (medians of runs)")
        axis.legend()
    fig.tight_layout()
    path = out_dir / f"{stem}-latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    ladders = {t: [d["median"] for c, d in e["cases"].items()
                   if c.startswith("levels.") and c != "levels.summary" and d["median"]]
               for t, e in targets.items()}
    if any(ladders.values()):
        fig, axis = plt.subplots(figsize=(9, 5))
        right = axis.twinx()
        for target, rows in ladders.items():
            conns = [r["connections"] for r in rows]
            axis.plot(conns, [r.get("deliveries_per_s") or 0 for r in rows], "o-",
                      label=f"{target} deliveries/s")
            right.plot(conns, [r.get("p99_ms") or 0 for r in rows], "s--",
                       label=f"{target} p99 ms")
        axis.set_xscale("log")
        axis.set_xlabel("connections")
        axis.set_ylabel("deliveries/s")
        right.set_ylabel("p99 completion ms")
        axis.set_title("load levels: deliveries/s (solid) and p99 (dashed)")
        lines = axis.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        axis.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}-levels.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
