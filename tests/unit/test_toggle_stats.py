"""The toggled measurement's statistics: coverage under drift, outcomes, attribution by process."""

import random

import numpy as np

from harness.analysis import toggle_stats


def _entry(values: list[tuple[int, str, float, float]], own: dict[str, float] | None = None) -> dict:
    """A toggle record whose window (cycle, arm) costs cost_us per op for ops ops; own: an arm's
    consumer CPU (ns) per on-period, spent half in the window and half after its switch-off."""
    own = own or {}
    labels = sorted({arm for _, arm, _, _ in values})
    arms = [{"label": "none", "backend": "none", "role": "baseline", "level": None},
            {"label": "none (A/A)", "backend": "none", "role": "aa", "level": None}]
    arms += [{"label": label, "backend": label.split("[")[0], "role": "observer",
              "level": "state"} for label in labels if not label.startswith("none")]
    windows, t, cpu, ops = [], 0.0, 0, 0
    tasks = {label: 0 for label in own}

    def sample():
        return {"t": t, "ops": ops, "cpu_ns": cpu, "stat": [0] * 8, "tasks": dict(tasks)}

    for cycle, arm, cost_us, n in values:
        on = sample()
        t += 0.2
        start = sample()
        t += 1.0
        ops += n
        mine = own.get(arm, 0.0)
        cpu += int(cost_us * 1e3 * n + mine / 2)  # system CPU in the window holds the consumer's share
        if arm in tasks:
            tasks[arm] += mine / 2
        end = sample()
        if arm in tasks:  # the drain after the switch-off
            tasks[arm] += mine / 2
        t += 0.1
        windows.append({"cycle": cycle, "arm": arm, "on": on, "start": start, "end": end, "off": {"events": n}})
    return {"workload": "churn", "arms": arms, "windows": windows, "final": sample(), "hz": 100, "cpus": 2}


def _simulate(rng: random.Random, cycles: int, true_pct: float, rho: float = 0.79, drift: float = 0.3) -> dict:
    """AR(1) noise (lag-1 autocorrelation rho, 5% sd) plus a linear drift of `drift` over the run."""
    labels = ["none", "none (A/A)", "tracepoint", "pcap"]
    effect = {"tracepoint": true_pct / 100, "pcap": 0.0, "none": 0.0, "none (A/A)": 0.0}
    noise, values, k, total = 0.0, [], 0, cycles * len(labels)
    for cycle in range(cycles):
        order = labels[:]
        rng.shuffle(order)
        for arm in order:
            noise = rho * noise + rng.gauss(0, 0.05 * (1 - rho * rho) ** 0.5)
            level = 60.0 * (1 + drift * k / total) * (1 + noise)
            values.append((cycle, arm, level * (1 + effect[arm]), 20000))
            k += 1
    return _entry(values)


def test_t_interval_on_cycle_differences_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(7)
    covered = runs = 0
    for _ in range(400):
        result = toggle_stats.analyse_group(_simulate(rng, cycles=20, true_pct=10.0))
        tp = result["arms"]["tracepoint"]["overhead"]
        low, high = tp["ci_us"]
        truth = 6.0 * np.mean([1 + 0.3 * k / 80 for k in range(80)])  # 10% of the drifting baseline
        covered += low <= truth <= high
        runs += 1
    coverage = covered / runs
    assert 0.92 <= coverage <= 0.98, coverage


def test_identical_arms_are_decided_as_no_difference_and_a_real_gap_as_cheaper():
    rng = random.Random(3)
    result = toggle_stats.analyse_group(_simulate(rng, cycles=60, true_pct=20.0, rho=0.5, drift=0.0))
    aa = result["aa"]
    assert aa["decided"] and aa["outcome"] == "no_difference", aa
    (headline,) = result["headline"]
    assert (headline["a"], headline["b"]) == ("tracepoint", "pcap")
    assert headline["decided"] and headline["outcome"] == "b_cheaper", headline  # tracepoint costs 20% more
    assert 15 < headline["diff_pct"] < 25


def test_few_cycles_are_not_decided():
    result = toggle_stats.analyse_group(_simulate(random.Random(1), cycles=3, true_pct=0.0))
    assert result["aa"]["outcome"] == "not_decided"
    assert result["aa"]["half_width_pp"] > toggle_stats.DECIDE_PP


def test_a_consumer_draining_after_its_switch_off_is_charged_to_its_own_window():
    # every window costs 50 us/op of system CPU; pcap's consumer adds 0.24 s per on-period, half of
    # it after the switch-off (in the margin): the window must carry its share, never a neighbour
    values = [(c, arm, 50.0, 10000) for c in range(4) for arm in ("none", "none (A/A)", "pcap")]
    result = toggle_stats.analyse_group(_entry(values, own={"pcap": 0.24e9}))
    pcap = result["arms"]["pcap"]
    # 0.24 s over 1.2 s of traffic, 1 s of it measured: 0.2 s per 10,000 operations = 20 us/op
    assert abs(pcap["overhead"]["diff_us"] - 20.0) < 0.5, pcap
    assert abs(result["arms"]["none"]["cpu_per_op_us"] - 50.0) < 0.5
    leak = result["conservation"]["observer_cpu"]["pcap"]
    assert leak["outside_pct"] < 1.0, leak


def test_a_cycle_with_heavy_steal_is_excluded_for_every_arm():
    values = [(c, arm, 50.0, 10000) for c in range(5) for arm in ("none", "none (A/A)", "tracepoint")]
    entry = _entry(values)
    entry["windows"][3]["end"]["stat"] = [0] * 7 + [100]  # 100 ticks of 200 possible in 1 s on 2 CPUs
    result = toggle_stats.analyse_group(entry)
    assert result["excluded"]["steal"] == 3  # cycle 1: its three windows
    assert {row["windows"] for row in result["arms"].values()} == {4}
    entry["windows"][3]["end"]["stat"] = [0] * 7 + [40]  # 13% of one window, 4.4% of the cycle: kept
    assert toggle_stats.analyse_group(entry)["excluded"]["steal"] == 0
    for w in entry["windows"]:  # steady 30% steal everywhere: flagged, not emptied
        w["end"]["stat"] = [0] * 7 + [60]
    steady = toggle_stats.analyse_group(entry)
    assert steady["excluded"]["steal"] == 0 and abs(steady["median_steal_pct"] - 30) < 1e-6


def test_levels_pair_like_with_like():
    assert toggle_stats.level_of("tracepoint", {"hooks": "state+destroy"}) == "state"
    assert toggle_stats.level_of("tracepoint", {"hooks": "all"}) == "full"
    assert toggle_stats.level_of("tracepoint", {"hooks": "state+probe"}) == "full"
    assert toggle_stats.level_of("pcap", {"filter": "state"}) == "state"
    arms = [{"label": "tp-s", "backend": "tracepoint", "role": "observer", "level": "state"},
            {"label": "tp-f", "backend": "tracepoint", "role": "observer", "level": "full"},
            {"label": "pc-s", "backend": "pcap", "role": "observer", "level": "state"},
            {"label": "pc-f", "backend": "pcap", "role": "observer", "level": "full"}]
    pairs = [(a["label"], b["label"]) for a, b in toggle_stats.headline_pairs(arms)]
    assert pairs == [("tp-s", "pc-s"), ("tp-f", "pc-f")]
    for arm in arms:
        arm["consumer"] = "c"
    arms += [{"label": "tp-s-py", "backend": "tracepoint", "role": "observer", "level": "state", "consumer": "python"},
             {"label": "pc-s-py", "backend": "pcap", "role": "observer", "level": "state", "consumer": "python"}]
    pairs = [(a["label"], b["label"]) for a, b in toggle_stats.headline_pairs(arms)]
    assert pairs == [("tp-s", "pc-s"), ("tp-f", "pc-f"), ("tp-s-py", "pc-s-py")]  # never C against Python
    assert toggle_stats.consumer_of("tracepoint", {"consumer": "python"}) == "python"
    assert toggle_stats.consumer_of("tracepoint", {"consumer": "auto"}) == "c"
    assert toggle_stats.consumer_of("pcap", {"consumer": "python"}) == "python"


def _stalling(rng: random.Random, cycles: int, true_pct: float) -> dict:
    """Stream-like noise: 2% sd, and one window in seven stalls (costs 15-90% more) whatever is attached."""
    labels = ["none", "none (A/A)", "tracepoint", "pcap"]
    effect = {"tracepoint": true_pct / 100, "pcap": 0.0, "none": 0.0, "none (A/A)": 0.0}
    values = []
    for cycle in range(cycles):
        order = labels[:]
        rng.shuffle(order)
        for arm in order:
            stall = rng.uniform(0.15, 0.9) if rng.random() < 1 / 7 else 0.0
            values.append((cycle, arm, 60.0 * (1 + effect[arm]) * (1 + rng.gauss(0, 0.02) + stall), 20000))
    entry = _entry(values)
    entry["settings"] = {"estimator": "median"}
    return entry


def test_median_interval_covers_the_median_difference_at_least_95_percent_of_the_time():
    rng = random.Random(11)
    covered = runs = 0
    for _ in range(400):
        diffs = [rng.expovariate(1.0) - rng.expovariate(1.0) + 2.0 for _ in range(30)]  # median 2, heavy tails
        _, low, high = toggle_stats.median_interval(diffs)
        covered += low <= 2.0 <= high
        runs += 1
    assert 0.94 <= covered / runs <= 0.995, covered / runs
    assert toggle_stats.median_interval([1.0] * 5)[1] is None  # 5 differences cannot give 95%


def test_stalls_leave_the_median_decided_where_the_mean_is_not():
    # 40 simulated runs of 40 cycles: the median's A/A interval is the narrower in every one and
    # decided in most (36 of 40 when written); the mean's, widened by the stalls, in none
    narrower = median_decided = mean_decided = 0
    for seed in range(40):
        entry = _stalling(random.Random(seed), cycles=40, true_pct=10.0)
        robust = toggle_stats.analyse_group(entry)
        assert robust["estimator"] == "median"
        entry["settings"] = {"estimator": "mean"}
        plain = toggle_stats.analyse_group(entry)
        narrower += robust["aa"]["half_width_pp"] < plain["aa"]["half_width_pp"]
        median_decided += robust["aa"]["decided"]
        mean_decided += plain["aa"]["decided"]
        if robust["aa"]["decided"]:
            assert robust["aa"]["outcome"] == "no_difference", robust["aa"]
    assert narrower == 40 and median_decided >= 32 and mean_decided <= 4, (narrower, median_decided, mean_decided)


def test_a_cycle_with_a_neighbour_is_excluded_for_every_arm():
    values = [(c, arm, 50.0, 10000) for c in range(5) for arm in ("none", "none (A/A)", "tracepoint")]
    entry = _entry(values)
    for w in entry["windows"]:  # the run's own cgroup holds all of the CPU ...
        for point in ("on", "start", "end"):
            w[point]["run_ns"] = w[point]["cpu_ns"]
    entry["final"]["run_ns"] = entry["final"]["cpu_ns"]
    # ... except in cycle 2's middle window, where a neighbour used 0.6 of the 2 CPUs for its second
    entry["windows"][7]["end"]["run_ns"] -= int(0.6e9)
    result = toggle_stats.analyse_group(entry)
    assert result["excluded"]["foreign"] == 3, result["excluded"]
    assert {row["windows"] for row in result["arms"].values()} == {4}
    assert result["median_foreign_pct"] == 0.0


def _with_slices(entry: dict, stalled: set[int]) -> dict:
    """Ten slices per window, steady, except windows in `stalled` (one slice at 10% of the rate)."""
    for i, w in enumerate(entry["windows"]):
        t0, t1, o0, o1 = w["start"]["t"], w["end"]["t"], w["start"]["ops"], w["end"]["ops"]
        weights = [0.1 if i in stalled and k == 4 else 1.0 for k in range(10)]
        slices, done = [], 0.0
        for k in range(9):
            done += weights[k] / sum(weights)
            slices.append([t0 + (t1 - t0) * (k + 1) / 10, o0 + (o1 - o0) * done])
        w["slices"] = slices
    return entry


def test_stalls_spread_over_the_arms_are_excluded_and_stalls_that_follow_one_are_kept():
    values = [(c, arm, 50.0, 10000) for c in range(12) for arm in ("none", "none (A/A)", "tracepoint")]
    spread = toggle_stats.analyse_group(_with_slices(_entry(values), stalled={0, 4, 8, 19, 23, 30}))
    assert spread["stalls"] == {"none": 2, "none (A/A)": 2, "tracepoint": 2}
    assert spread["excluded"]["stall"] == 6 and spread["stall_rule"].startswith("stalls spread over the arms by chance: those windows")
    # every tracepoint window stalls, nothing else: that is the observer's doing, not the host's
    following = toggle_stats.analyse_group(_with_slices(_entry(values), stalled={3 * c + 2 for c in range(12)}))
    assert following["stalls"]["tracepoint"] == 12 and following["excluded"]["stall"] == 0
    assert following["stall_rule"] == "stalls follow an arm: kept as its cost"
    steady = toggle_stats.analyse_group(_with_slices(_entry(values), stalled=set()))
    assert steady["excluded"]["stall"] == 0 and steady["stall_rule"] == "no stall"


def test_time_a_group_leaves_is_shared_by_the_groups_after_it(monkeypatch):
    from harness import toggle

    used = {"churn": 150.0, "rr": 120.0, "stream": 500.0}  # churn decided early; stream wants all

    def fake_measure(group, run_id, entry, save, say, seed):
        entry["elapsed_s"] = min(used[group.workload], group.settings.max_s)

    monkeypatch.setattr(toggle, "measure", fake_measure)
    groups = [toggle.Group(w, {}, [], toggle.Settings(max_s=cap)) for w, cap in
              (("churn", 270.0), ("rr", 120.0), ("stream", 120.0))]

    class Record:
        data: dict = {}

        def save(self):
            pass

    record = Record()
    toggle.run_groups(groups, record, "20261203T000000-0000", lambda message: None)
    caps = [g.settings.max_s for g in groups]
    # churn left 120 s: half to rr, half kept for stream, which also gets the 60 s rr left
    assert caps == [270.0, 180.0, 240.0], caps
    assert sum(e["elapsed_s"] for e in record.data["toggle"]) <= 270 + 120 + 120
