"""The bench's report: a table on stdout, ratios between targets, a PNG plot."""

from __future__ import annotations

import statistics
from pathlib import Path

# Issue 7's targets, printed next to the measured ratios.
TARGET_VS_PLAIN = 4.0
TARGET_VS_ECHO = 0.5


def _ok(results: list[dict]) -> list[dict]:
    return [r for r in results if "failed" not in r]


def ratios(results: list[dict]) -> list[dict]:
    """Per number of charge points: every levity variant against plain-ocpp and echo. With
    several rounds, each ratio is taken within a round and the median is reported, with every
    round's value under "rounds"."""
    rounds = sorted({r.get("round", 0) for r in results})
    per_round = [_ratios_of_round([r for r in results if r.get("round", 0) == n]) for n in rounds]
    if len(per_round) == 1:
        return per_round[0]
    merged: dict[tuple, dict] = {}
    for entries in per_round:
        for entry in entries:
            key = (entry["charge_points"], entry["target"])
            slot = merged.setdefault(key, {"target": entry["target"], "charge_points": entry["charge_points"],
                                           "rounds": {}})
            for name, value in entry.items():
                if name not in ("target", "charge_points"):
                    slot["rounds"].setdefault(name, []).append(value)
    out = []
    for _, slot in sorted(merged.items()):
        for name, values in slot["rounds"].items():
            slot[name] = round(statistics.median(values), 3)
        out.append(slot)
    return out


def _ratios_of_round(results: list[dict]) -> list[dict]:
    out = []
    by_point = {(r["target"], r["charge_points"]): r for r in _ok(results)}
    for chargers in sorted({r["charge_points"] for r in _ok(results)}):
        plain = by_point.get(("plain-ocpp", chargers))
        echo = by_point.get(("echo", chargers))
        for (target, n), r in sorted(by_point.items()):
            if n != chargers or not target.startswith("levity"):
                continue
            entry = {"target": target, "charge_points": chargers}
            for name, base in (("plain-ocpp", plain), ("echo", echo)):
                if base and base["calls_per_second"]:
                    entry[f"calls_per_second_vs_{name}"] = round(r["calls_per_second"] / base["calls_per_second"], 3)
                if base and base["latency_ms"]["p99"] and r["latency_ms"]["p99"] is not None:
                    entry[f"p99_vs_{name}"] = round(r["latency_ms"]["p99"] / base["latency_ms"]["p99"], 3)
            out.append(entry)
    return out


def _range(values: list[float] | None) -> str:
    return f" [{min(values):.2f}-{max(values):.2f}]" if values and len(values) > 1 else ""


def _fmt(value, spec: str = "", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def table(run: dict) -> str:
    results = run["results"]
    cfg = run["config"]
    lines = []
    mode = (f"open loop, {cfg['rate_per_charger']:g} calls/s per charger" if cfg["mode"] == "open"
            else "closed loop (next call when the answer comes)")
    if cfg.get("connections_only"):
        mode = f"connections only: heartbeat every {cfg['heartbeat_interval']:g}s per charger"
    machine = run["machine"]
    lines.append(f"Levity load bench: {mode}; {cfg['warmup']:g}s warm-up, {cfg['duration']:g}s window; "
                 f"{machine.get('cpus')} CPUs, load client in {cfg['clients']} process(es) on the same machine")
    header = (f"{'target':<20} {'CPs':>6} {'held':>6} {'calls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'err':>5} {'t/o':>5} {'srvCPU%':>8} {'mach%':>5} {'peakMB':>7} {'KB/conn':>8} {'audit':>8} {'cliCPU%':>8}")
    lines += [header, "-" * len(header)]
    for r in results:
        if "failed" in r:
            lines.append(f"{r['target']:<20} {r['charge_points']:>6} FAILED: {r['failed'].splitlines()[0][:90]}")
            continue
        lat = r["latency_ms"]
        audit = r.get("audit", {}).get("delivered") if "audit" in r else None
        name = r["target"] if cfg.get("rounds", 1) == 1 else f"{r['target']} #{r.get('round', 0) + 1}"
        lines.append(
            f"{name:<20} {r['charge_points']:>6} {r['connections_held']:>6} {r['calls_per_second']:>9.1f} "
            f"{_fmt(lat['p50'], '.2f'):>8} {_fmt(lat['p95'], '.2f'):>8} {_fmt(lat['p99'], '.2f'):>8} "
            f"{r['errors']:>5} {r['timeouts']:>5} {r['server_cpu_percent']:>8.1f} {r['machine_cpu_busy_percent']:>5.0f} {r['server_peak_rss_mb']:>7.1f} "
            f"{_fmt(r['rss_per_connection_kb'], '.1f'):>8} {_fmt(audit, 'd'):>8} {r['client_cpu_percent']:>8.1f}")
    lines.append("")
    lines.append("held: connections open at the end; t/o: timeouts; srvCPU%: server process tree, % of one core; "
                 "mach%: all CPUs busy (incl. kernel networking);")
    lines.append("KB/conn: (RSS with the chargers idle - RSS at start) / connected; ")
    lines.append("audit: events the Fluentd Forward receiver got (levity with audit on); "
                 "cliCPU%: all load client processes, % of one core")
    # At a fixed offered rate (connections only), calls/s ratios only say "kept up": left out.
    rows = [] if cfg.get("connections_only") else run.get("ratios") or []
    if rows:
        lines.append("")
        lines.append("Ratios (the figures that count: the machine is noisy)"
                     + (f"; median of {cfg['rounds']} rounds, range in brackets" if cfg.get("rounds", 1) > 1 else ""))
        for row in rows:
            parts = []
            spread = row.get("rounds", {})
            if "calls_per_second_vs_plain-ocpp" in row:
                parts.append(f"calls/s {row['target']}/plain-ocpp = {row['calls_per_second_vs_plain-ocpp']:.2f}x"
                             f"{_range(spread.get('calls_per_second_vs_plain-ocpp'))} (target >= {TARGET_VS_PLAIN:g}x)")
            if "calls_per_second_vs_echo" in row:
                parts.append(f"{row['target']}/echo = {row['calls_per_second_vs_echo']:.2f}"
                             f"{_range(spread.get('calls_per_second_vs_echo'))} (target >= {TARGET_VS_ECHO:g})")
            if "p99_vs_plain-ocpp" in row:
                parts.append(f"p99 {row['target']}/plain-ocpp = {row['p99_vs_plain-ocpp']:.2f}")
            if parts:
                lines.append(f"  {row['charge_points']:>6} CPs: " + "; ".join(parts))
    lines.append("")
    for r in _ok(results):
        extra = []
        if r.get("errors"):
            extra.append(f"errors {r['errors_by_action']}, e.g. {r['error_samples'][:1]}")
        if r.get("connect_failures"):
            extra.append(f"connect failures {r['connect_failures']}")
        if r.get("disconnects"):
            extra.append(f"{r['disconnects']} dropped by the server")
        audit = r.get("audit")
        if audit and "delivered_per_second" in audit:
            extra.append(f"audit: {audit['delivered']} delivered, {audit['delivered_per_second']:.0f}/s in the window, "
                         f"{audit.get('backlog_at_window_end')} behind when it closed, "
                         f"sink {audit.get('sink_stats')}")
        elif audit:
            extra.append(f"audit sink {audit.get('sink_stats')}")
        if extra:
            lines.append(f"  {r['target']} x {r['charge_points']}: " + "; ".join(extra))
    if cfg.get("connections_only"):
        for r in _ok(results):
            hb = r["per_action"].get("Heartbeat", {})
            lines.append(f"  {r['target']}: {r['connections_held']}/{r['charge_points']} connections held, "
                         f"{hb.get('calls', 0)} heartbeats, p99 {_fmt(hb.get('p99'), '.1f')} ms, "
                         f"{_fmt(r['rss_per_connection_kb'], '.1f')} KB RSS per connection "
                         f"(targets: p99 < 100 ms, <= 15 KB)")
    limits = run.get("limits", {})
    if cfg.get("chargers") and limits.get("nofile_soft", 1 << 30) < max(cfg["chargers"]) + 256:
        lines.append(f"  open files limit {limits['nofile_soft']} (hard {limits['nofile_hard']}) "
                     f"is below {max(cfg['chargers'])} charge points")
    return "\n".join(lines)


def plot(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _ok(run["results"])
    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for target in dict.fromkeys(r["target"] for r in results):
        xs = sorted({r["charge_points"] for r in results if r["target"] == target})
        # With several rounds: the median of each point.
        points = [[r for r in results if r["target"] == target and r["charge_points"] == n] for n in xs]
        ax_rate.plot(xs, [statistics.median(r["calls_per_second"] for r in p) for p in points], marker="o",
                     label=target)
        ax_p99.plot(xs, [statistics.median(r["latency_ms"]["p99"] or 0 for r in p) for p in points], marker="o",
                    label=target)
    for ax, title, ylabel in ((ax_rate, "Throughput", "calls per second"),
                              (ax_p99, "Latency p99", "p99 latency (ms)")):
        ax.set_title(title)
        ax.set_xlabel("charge points")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if len({r["charge_points"] for r in results}) > 1:
            ax.set_xscale("log")
    if any(r["latency_ms"]["p99"] for r in results):
        ax_p99.set_yscale("log")
    cfg = run["config"]
    mode = "closed loop" if cfg["mode"] == "closed" else f"open loop {cfg['rate_per_charger']:g}/s per charger"
    fig.suptitle(f"Levity load bench ({mode}, {run['machine'].get('cpus')} CPUs, {cfg['duration']:g}s per point)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
