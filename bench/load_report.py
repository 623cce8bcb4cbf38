"""bench/load.py's verdicts and tables: what went wrong whatever the timing (`correctness`), the
issue's farm-side targets met or not (`targets`), and the printed tables (`print_report`). Pure
functions of the report dict that bench/load.py also writes as JSON."""
from __future__ import annotations

TARGETS = {"idle_core_pct": 50.0, "heartbeat_p99_ms": 50.0, "results_per_s": 1000.0, "results_per_s_from_k": 16,
           "cpu_ms_per_job": 1.0}


# ------------------------------------------------------------------------------------ verdicts
def exactly_once(row: dict) -> bool:
    """Every job of a dispatch round has exactly one result."""
    return row["store"]["jobs_by_result_count"] == {"1": row["jobs"]}


def correctness(report: dict) -> list[str]:
    """What went wrong, whatever the timing (the scaled-down test asserts this is empty)."""
    problems = []
    idle = report.get("idle")
    if idle:
        if idle["missing_phase"] or idle["evicted_phase"]:
            problems.append(f"idle: {idle['missing_phase']} agents marked missing, {idle['evicted_phase']} evicted")
        if set(idle["states_at_end"]) - {"idle"} or sum(idle["states_at_end"].values()) != idle["agents"]:
            problems.append(f"idle: agent states at the end {idle['states_at_end']}")
        probe = idle.get("probe_heartbeat") or {}
        if probe.get("failed"):
            problems.append(f"idle: the probe's heartbeats {probe}")
        if not idle["heartbeat"]["calls"] or idle["heartbeat"]["failures"] or idle["errors"]:
            problems.append(f"idle: heartbeats {idle['heartbeat']}, errors {idle['errors']}")
    for row in report.get("dispatch", []):
        store, n, where = row["store"], row["jobs"], _round(row)
        if not (store["jobs"] == store["done"] == store["results"] == store["jobs_with_a_result"]
                == store["results_by_lease_holder"] == n == row["accepted"]):
            problems.append(f"{where}: {n} jobs queued, store {store}, {row['accepted']} accepted")
        if not exactly_once(row):
            problems.append(f"{where}: jobs by result count {store['jobs_by_result_count']}")
        if row["duplicate"] or row["refused"] or row["errors"] or row["reregistered"]:
            problems.append(f"{where}: duplicate {row['duplicate']}, refused {row['refused']}, "
                            f"re-registered {row['reregistered']}, errors {row['errors']}")
    return problems


def _round(row: dict) -> str:
    batch = row.get("queue_batch", 1)
    how = "queued ahead" if batch >= row["jobs"] else f"queued {batch} per transaction"
    return f"dispatch K={row['k']}, {how}"


def targets(report: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issue's farm-side targets this run measured."""
    rows = []
    idle = report.get("idle")
    if idle:
        p99, pct = idle["heartbeat"].get("p99_ms"), idle["coordinator_core_pct"]
        probe = idle.get("probe_heartbeat") or {}
        rows += [(f"idle {idle['agents']} agents: coordinator < {TARGETS['idle_core_pct']:g}% of one core",
                  f"{pct:.1f}%", pct < TARGETS["idle_core_pct"]),
                 (f"idle: heartbeat p99 < {TARGETS['heartbeat_p99_ms']:g} ms (Locust, in the agents' process)",
                  f"{p99} ms", p99 is not None and p99 < TARGETS["heartbeat_p99_ms"]),
                 *([(f"idle: heartbeat p99 < {TARGETS['heartbeat_p99_ms']:g} ms (the probe, a process of its own)",
                     f"{probe['p99_ms']} ms", probe["p99_ms"] is not None
                     and probe["p99_ms"] < TARGETS["heartbeat_p99_ms"])] if probe else []),
                 (f"idle: 0 agents missing over {idle['window_s']:.0f} s (+ registration and warm-up)",
                  f"{idle['missing_phase']} missing, {idle['evicted_phase']} evicted",
                  not idle["missing_phase"] and not idle["evicted_phase"])]
    dispatch = report.get("dispatch", [])
    for row in dispatch:
        where = _round(row)
        if row["k"] >= TARGETS["results_per_s_from_k"]:
            rows.append((f"{where}: >= {TARGETS['results_per_s']:g} results/s",
                         f"{row['results_per_s']:.0f}/s", row["results_per_s"] >= TARGETS["results_per_s"]))
        rows.append((f"{where}: <= {TARGETS['cpu_ms_per_job']:g} ms coordinator CPU per job",
                     f"{row['cpu_ms_per_job']:.2f} ms", row["cpu_ms_per_job"] <= TARGETS["cpu_ms_per_job"]))
    if dispatch:
        exact = all(exactly_once(row) for row in dispatch)
        rows.append(("dispatch: every job exactly one result", "yes" if exact else "no", exact))
    return rows


# ------------------------------------------------------------------------------------ tables
def _ms(value) -> str:
    return "-" if value is None else f"{value:g}"


def _pair(call: dict) -> str:
    return f"{_ms(call.get('p50_ms'))}/{_ms(call.get('p99_ms'))}"


def _load(values: list[float]) -> str:
    return " ".join(f"{x:.1f}" for x in values)


def _spread(ms: dict) -> str:
    if not ms["count"]:
        return "none"
    return f"{ms['count']}x, p50 {ms['p50']:g} p99 {ms['p99']:g} max {ms['max']:g}"


def _pauses(row: dict) -> str:
    return (f"event loop lag (a 20 ms sleep's lateness) {_spread(row['loop_lag_ms'])}; scheduler ticks "
            f"{_spread(row['tick_ms'])}; full garbage collections {_spread(row['gc_full_ms'])}")


def print_idle(idle: dict) -> None:
    hb = idle["heartbeat"]
    print(f"\n(a) {idle['agents']} idle agents: heartbeat every {idle['heartbeat_interval_s']:g} s + a Work stream "
          f"waiting for jobs, {idle['connections']} TCP connections; all registered in "
          f"{idle['registered_in_s']:.1f} s ({idle['register_retries']} retries); streams waiting at the end "
          f"{idle['streams_waiting']}, failed {idle['streams_failed']['calls']}")
    print(f"    {'window s':>9} {'coord CPU s':>11} {'% core':>7} {'bench CPU s':>11} {'heartbeats':>10} {'failed':>6} "
          f"{'p50 ms':>6} {'p99 ms':>6} {'max ms':>7} {'missing':>7} {'evicted':>7} "
          f"{'load avg start':>15} {'load avg end':>15}")
    print(f"    {idle['window_s']:9.1f} {idle['coordinator_cpu_s']:11.2f} {idle['coordinator_core_pct']:7.1f} "
          f"{idle['bench_cpu_s']:11.2f} {hb['calls']:10d} {hb['failures']:6d} {_ms(hb.get('p50_ms')):>6} "
          f"{_ms(hb.get('p99_ms')):>6} {_ms(hb.get('max_ms')):>7} {idle['missing_phase']:7d} "
          f"{idle['evicted_phase']:7d} {_load(idle['loadavg_start']):>15} {_load(idle['loadavg_end']):>15}")
    probe = idle.get("probe_heartbeat")
    if probe:
        print(f"    heartbeats of one more agent timed in a process of its own (bench/load_probe.py, every 0.1 s): "
              f"{probe['calls']} calls, {probe['failed']} failed, p50 {_ms(probe['p50_ms'])} ms, p99 "
              f"{_ms(probe['p99_ms'])} ms, max {_ms(probe['max_ms'])} ms")
    print(f"    states at the end: GetStatus {idle['states_at_end']}, store {idle['store_states_at_end']}; errors "
          f"{idle['errors'] or 'none'}")
    print(f"    in the coordinator over the window (ms): {_pauses(idle)}")


def print_dispatch(dispatch: list[dict]) -> None:
    for batch in dict.fromkeys(row.get("queue_batch", 1) for row in dispatch):
        _print_rounds([row for row in dispatch if row.get("queue_batch", 1) == batch])


def _print_rounds(dispatch: list[dict]) -> None:
    first = dispatch[0]
    batch = first.get("queue_batch", 1)
    how = (f"queued ahead (all {batch} in one transaction once the agents wait: dispatch alone)"
           if batch >= first["jobs"] else f"queued {batch} per transaction while the agents run")
    print(f"\n(b) dispatch: {first['jobs']} jobs per round, {how}, each run {first['job_s']:g} s by a fake agent "
          f"with {first['slots']} slot(s); results/s = first job queued -> last result in SQLite (the coordinator's "
          f"clock)")
    print(f"    {'K':>4} {'results/s':>9} {'span s':>7} {'coord CPU s':>11} {'ms/job':>6} {'submit s':>8} "
          f"{'bench CPU s':>11} {'lease tx/job':>12} {'job p50/p99':>13} {'result p50/p99':>14} {'jobs':>5} "
          f"{'results':>7} {'1 each':>6} {'load avg start':>15}")
    for row in dispatch:
        lease, report = row["calls"]["Work (jobs)"], row["calls"]["Work (result)"]
        print(f"    {row['k']:4d} {row['results_per_s']:9.0f} {row['processed_s']:7.2f} "
              f"{row['coordinator_cpu_s']:11.2f} {row['cpu_ms_per_job']:6.2f} {row['submit_cpu_s']:8.2f} {row['bench_cpu_s']:11.2f} "
              f"{row['lease_transactions'] / row['jobs']:12.2f} {_pair(lease):>13} {_pair(report):>14} "
              f"{row['store']['jobs']:5d} {row['store']['results']:7d} {'yes' if exactly_once(row) else 'NO':>6} "
              f"{_load(row['loadavg_start']):>15}")
    print("    ms/job: all the coordinator's CPU over the round, job submission included (submit s: the part of the "
          "thread that queued them); job: credit sent -> jobs on the stream, result: result sent -> its answer; "
          "latencies as Locust rounds them")
    for row in dispatch:
        print(f"    K={row['k']} in the coordinator (ms): {_pauses(row)}")


def print_memory(memory: dict, threads: dict) -> None:
    print(f"\n(c) coordinator memory (RSS, MB): after start {memory['rss_start_mb']:.0f}, peak "
          f"{memory['rss_peak_mb']:.0f}, at the end {memory['rss_end_mb']:.0f}")
    for name, phase in memory["phases"].items():
        print(f"    {name:>14}: start {phase['rss_start_mb']:.0f}, peak {phase['rss_peak_mb']:.0f}, "
              f"end {phase['rss_end_mb']:.0f}")
    for name, per_thread in threads.items():
        print(f"    coordinator CPU s by thread during {name}: "
              + ", ".join(f"{k} {v:g}" for k, v in per_thread.items() if v))


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"\nmachine: {machine['cores']} cores, CPU flags {machine['cpu_flags'] or 'none'}, load average at start "
          f"{machine['loadavg_start']}, at end {machine['loadavg_end']}; Locust {machine['locust']}, grpcio "
          f"{machine['grpcio']}; fake agents at nice +{machine.get('agents_nice', 0)} relative to the coordinator "
          f"and the probe")
    if report.get("idle"):
        print_idle(report["idle"])
    if report.get("dispatch"):
        print_dispatch(report["dispatch"])
    print_memory(report["memory"], report.get("coordinator_thread_cpu_s", {}))
    print("\ntargets:")
    for what, measured, met in report["targets"]:
        print(f"    {'met    ' if met else 'NOT met'}  {what}: {measured}")
    problems = report["problems"]
    print("\ncorrectness: " + ("every check passed" if not problems else "FAILED\n    " + "\n    ".join(problems)))
