"""harness/analysis/inkernel.py: bpf_stats ns/event per cell and the observer's multiple of its empty twin."""

from harness.analysis import inkernel


def _cell(backend: str, ns: list[float], **params) -> dict:
    return {"label": f"churn/{backend}", "workload": "churn",
            "backend": backend, "available": True,
            "params": {"workload": {"connections": 40000}, "backend": {"hooks": "all", "flavour": "raw_tp", **params}},
            "trials": [{"index": i, "status": "ok",
                        "observed": {"details": {"bpf_stats": {"ns_per_event": v}}}} for i, v in enumerate(ns)]}


def _run(*cells: dict) -> dict:
    return {"cells": list(cells)}


def test_the_multiple_is_paired_per_round_against_the_twin_on_the_same_hooks_and_flavour():
    observer = _cell("tracepoint", [400, 410, 420, 430, 440], mode="stream")
    twin = _cell("tracepoint-empty", [100, 100, 100, 100, 100])
    other_flavour = _cell("tracepoint-empty", [10, 10, 10, 10, 10])
    other_flavour["params"]["backend"]["flavour"] = "tp"
    other_flavour["label"] = "churn/tracepoint-empty[flavour=tp]"
    out = inkernel.analyse(_run(observer, other_flavour, twin))
    [group] = out["workloads"].values()
    assert group["cells"]["churn/tracepoint-empty"]["median"] == 100
    [multiple] = group["multiples"]
    assert multiple["empty"] == "churn/tracepoint-empty"  # not the tp twin
    assert multiple["multiple"]["median"] == 4.2
    assert multiple["multiple"]["low"] >= 4.0 and multiple["multiple"]["high"] <= 4.4
    assert multiple["against_goal"] == "beyond"


def test_within_the_goal_only_when_the_whole_interval_is():
    twin = _cell("tracepoint-empty", [100] * 5)
    within = inkernel.analyse(_run(_cell("tracepoint", [150, 160, 170, 180, 190]), twin))
    [m] = next(iter(within["workloads"].values()))["multiples"]
    assert m["against_goal"] == "within"
    straddling = inkernel.analyse(_run(_cell("tracepoint", [150, 180, 200, 220, 250]), twin))
    [m] = next(iter(straddling["workloads"].values()))["multiples"]
    assert m["against_goal"] == "undecided"


def test_cells_without_bpf_stats_or_without_a_twin_give_no_multiple():
    pcap = _cell("pcap", [0, 0, 0])
    for t in pcap["trials"]:
        t["observed"]["details"] = {}
    out = inkernel.analyse(_run(pcap, _cell("tracepoint", [300, 310, 320])))
    [group] = out["workloads"].values()
    assert list(group["cells"]) == ["churn/tracepoint"] and group["multiples"] == []
