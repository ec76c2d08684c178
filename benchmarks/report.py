"""The bench's report: a table on stdout, ratios between targets, a PNG plot."""

from __future__ import annotations

import statistics
from pathlib import Path

# Issue 7's targets, printed next to the measured ratios.
TARGET_VS_PLAIN = 4.0
TARGET_VS_ECHO = 0.5
TARGET_AUDIT_ON = 0.9  # audit on costs at most 10% of calls/s against audit off


def _ok(results: list[dict]) -> list[dict]:
    return [r for r in results if "failed" not in r]


def _phase(r: dict) -> str:
    return r.get("phase", "main")


def ratios(results: list[dict]) -> list[dict]:
    """Per phase (per-core, whole machine...) and number of charge points: every levity variant
    against plain-ocpp, echo and levity with audit off. With several rounds, each ratio is
    taken within a round and the median is reported, with every round's value under "rounds"."""
    out = []
    for phase in dict.fromkeys(_phase(r) for r in results):
        out += _ratios_of_phase([r for r in results if _phase(r) == phase])
    return out


def _ratios_of_phase(results: list[dict]) -> list[dict]:
    rounds = sorted({r.get("round", 0) for r in results})
    per_round = [_ratios_of_round([r for r in results if r.get("round", 0) == n]) for n in rounds]
    if len(per_round) == 1:
        return per_round[0]
    merged: dict[tuple, dict] = {}
    for entries in per_round:
        for entry in entries:
            key = (entry["charge_points"], entry["target"])
            slot = merged.setdefault(key, {"target": entry["target"], "charge_points": entry["charge_points"],
                                           "phase": entry["phase"], "mix": entry["mix"], "rounds": {}})
            for name, value in entry.items():
                if name not in ("target", "charge_points", "phase", "mix"):
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
        audit_off = by_point.get(("levity-audit-off", chargers))
        for (target, n), r in sorted(by_point.items()):
            if n != chargers or not target.startswith("levity") or "calls_per_second" not in r:
                continue
            entry = {"target": target, "charge_points": chargers, "phase": _phase(r), "mix": r.get("mix", "default")}
            bases = [("plain-ocpp", plain), ("echo", echo)]
            if target != "levity-audit-off":
                bases.append(("audit-off", audit_off))
            for name, base in bases:
                if base and base["calls_per_second"]:
                    entry[f"calls_per_second_vs_{name}"] = round(r["calls_per_second"] / base["calls_per_second"], 3)
                if base and base["latency_ms"]["p99"] and r["latency_ms"]["p99"] is not None:
                    entry[f"p99_vs_{name}"] = round(r["latency_ms"]["p99"] / base["latency_ms"]["p99"], 3)
                if base and base.get("server_cpu_us_per_call") and r.get("server_cpu_us_per_call"):
                    entry[f"cpu_us_per_call_vs_{name}"] = round(
                        r["server_cpu_us_per_call"] / base["server_cpu_us_per_call"], 3)
            out.append(entry)
    return out


def _range(values: list[float] | None) -> str:
    return f" [{min(values):.2f}-{max(values):.2f}]" if values and len(values) > 1 else ""


def _fmt(value, spec: str = "", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def table(run: dict) -> str:
    """Every phase's table: per core (load, by call type, reconnect storm), then the whole machine."""
    phases = run["config"].get("phases") or [{"name": "main", "title": ""}]
    blocks = []
    for phase in phases:
        results = [r for r in run["results"] if _phase(r) == phase["name"]]
        if phase.get("storm"):
            blocks.append(storm_table(phase, results))
        elif not phase.get("by_type"):
            blocks.append(load_table(run, phase, results))
    by_type = [p for p in phases if p.get("by_type")]
    if by_type:
        blocks.insert(1, by_type_table(run, by_type))
    return "\n\n".join(blocks)


def load_table(run: dict, phase: dict, results: list[dict]) -> str:
    cfg = run["config"]
    lines = [phase["title"]] if phase.get("title") else []
    mode = (f"open loop, {cfg['rate_per_charger']:g} calls/s per charger" if cfg["mode"] == "open"
            else "closed loop (next call when the answer comes)")
    if cfg.get("connections_only"):
        mode = f"connections only: heartbeat every {cfg['heartbeat_interval']:g}s per charger"
    machine = run["machine"]
    clients = sorted({r.get("client_processes") for r in _ok(results) if r.get("client_processes")})
    lines.append(f"Levity load bench: {mode}; {cfg['warmup']:g}s warm-up, {cfg['duration']:g}s window; "
                 f"{machine.get('cpus')} CPUs, load client in {'/'.join(map(str, clients)) or cfg['clients']} "
                 "process(es) on the same machine")
    header = (f"{'target':<20} {'CPs':>6} {'held':>6} {'calls/s':>9} {'us/call':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'err':>5} {'t/o':>5} {'srvCPU%':>8} {'mach%':>5} {'peakMB':>7} {'KB/conn':>8} "
              f"{'audit':>8} {'cliCPU%':>8}")
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
            f"{_fmt(r.get('server_cpu_us_per_call'), '.1f'):>8} {_fmt(lat['p50'], '.2f'):>8} {_fmt(lat['p95'], '.2f'):>8} {_fmt(lat['p99'], '.2f'):>8} "
            f"{r['errors']:>5} {r['timeouts']:>5} {r['server_cpu_percent']:>8.1f} {r['machine_cpu_busy_percent']:>5.0f} {r['server_peak_rss_mb']:>7.1f} "
            f"{_fmt(r['rss_per_connection_kb'], '.1f'):>8} {_fmt(audit, 'd'):>8} {r['client_cpu_percent']:>8.1f}")
    lines.append("")
    lines.append("held: connections open at the end; us/call: server process tree CPU time / answered calls (us); "
                 "t/o: timeouts;")
    lines.append("srvCPU%: server process tree, % of one core; mach%: all CPUs busy (incl. kernel networking);")
    lines.append("KB/conn: (RSS with the chargers idle - RSS at start) / connected; ")
    lines.append("audit: events the Fluentd Forward receiver got (levity with audit on); "
                 "cliCPU%: all load client processes, % of one core")
    # At a fixed offered rate (connections only), calls/s ratios only say "kept up": left out.
    rows = [] if cfg.get("connections_only") else [r for r in run.get("ratios") or []
                                                    if r.get("phase", "main") == phase["name"]]
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
            if "calls_per_second_vs_audit-off" in row:
                parts.append(f"audit on/off: calls/s {row['calls_per_second_vs_audit-off']:.2f}"
                             f"{_range(spread.get('calls_per_second_vs_audit-off'))} (target >= {TARGET_AUDIT_ON:g}), "
                             f"CPU us/call {_fmt(row.get('cpu_us_per_call_vs_audit-off'), '.2f')}"
                             f"{_range(spread.get('cpu_us_per_call_vs_audit-off'))}")
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


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def by_type_table(run: dict, phases: list[dict]) -> str:
    """Server CPU microseconds per call by call type (one single-step mix per row), per target,
    median over rounds; levity against echo and against itself with audit off."""
    results = _ok(run["results"])
    targets = list(dict.fromkeys(t for p in phases for t in p["targets"]))
    lines = [f"Server CPU per call by call type (us, median of rounds; calls/s in brackets), {phases[0]['title']}"
             .replace("Per core, only " + phases[0].get("mix_name", "") + " ", "")]
    header = f"{'step':<12}" + "".join(f" {t:>22}" for t in targets) + f" {'levity/echo':>12} {'audit on/off':>13}"
    lines += [header, "-" * len(header)]
    for phase in phases:
        cells, us = [], {}
        for target in targets:
            points = [r for r in results if _phase(r) == phase["name"] and r["target"] == target]
            us[target] = _median([r.get("server_cpu_us_per_call") for r in points])
            rate = _median([r["calls_per_second"] for r in points])
            cells.append(f" {_fmt(us[target], '.1f'):>10} ({_fmt(rate, '.0f'):>8})")
        ratio = lambda a, b: us.get(a) / us[b] if us.get(a) and us.get(b) else None  # noqa: E731
        lines.append(f"{phase.get('mix_name', phase['name']):<12}" + "".join(cells)
                     + f" {_fmt(ratio('levity', 'echo'), '.2f'):>12} {_fmt(ratio('levity', 'levity-audit-off'), '.2f'):>13}")
    lines.append("A transaction step is Authorize, StartTransaction, MeterValues x k, StopTransaction: its figure is "
                 "per call of those.")
    return "\n".join(lines)


def storm_table(phase: dict, results: list[dict]) -> str:
    lines = [phase["title"]]
    header = (f"{'target':<14} {'round':>5} {'booted':>8} {'of':>7} {'seconds':>8} {'timeouts':>9} {'failures':>9} "
              f"{'boot p50 ms':>12} {'boot p99 ms':>12} {'srvCPU s':>9}")
    lines += [header, "-" * len(header)]
    for r in results:
        if "failed" in r:
            lines.append(f"{r['target']:<14} FAILED: {r['failed'].splitlines()[0][:90]}")
            continue
        boot = r.get("boot_latency_ms", {})
        lines.append(f"{r['target']:<14} {r.get('round', 0) + 1:>5} {r['connected']:>8} {r['charge_points']:>7} "
                     f"{r['connect_seconds']:>8.1f} {r.get('connect_timeouts', 0):>9} "
                     f"{sum(r['connect_failures'].values()):>9} {_fmt(boot.get('p50'), '.0f'):>12} "
                     f"{_fmt(boot.get('p99'), '.0f'):>12} {_fmt(r.get('server_cpu_seconds'), '.1f'):>9}")
    lines.append("seconds: from the first connect until every charger was booted or gave up; timeouts: connect + "
                 "BootNotification not done within --connect-timeout; srvCPU s: the server's CPU time at the end")
    for r in _ok(results):
        if r["connect_failures"]:
            lines.append(f"  {r['target']}: {r['connect_failures']}")
    return "\n".join(lines)


def plot(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in _ok(run["results"]) if "calls_per_second" in r
               and _phase(r) in ("main", "per-core", "whole-machine")]
    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for phase, target in dict.fromkeys((_phase(r), r["target"]) for r in results):
        mine = [r for r in results if r["target"] == target and _phase(r) == phase]
        xs = sorted({r["charge_points"] for r in mine})
        # With several rounds: the median of each point.
        points = [[r for r in mine if r["charge_points"] == n] for n in xs]
        label = f"{target} (whole machine)" if phase == "whole-machine" else target
        ax_rate.plot(xs, [statistics.median(r["calls_per_second"] for r in p) for p in points], marker="o",
                     label=label)
        ax_p99.plot(xs, [statistics.median(r["latency_ms"]["p99"] or 0 for r in p) for p in points], marker="o",
                    label=label)
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
