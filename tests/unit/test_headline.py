"""The one-screen summary: level x consumer rows, per-event cost, the peers beside them."""

from harness.analysis import headline


def _analysis():
    def arm(backend, level, consumer, diff_us, pct, events):
        return {"backend": backend, "role": "observer", "level": level, "consumer": consumer, "windows": 10,
                "events_per_op": events, "lost": 0,
                "overhead": {"diff_us": diff_us, "diff_pct": pct, "ci_pct": [pct - 1, pct + 1]}}
    arms = {"none": {"backend": "none", "role": "baseline", "rate": 50000.0, "cpu_per_op_us": 20.0},
            "tp": arm("tracepoint", "state", "c", 2.0, 10.0, 10.0),
            "pc": arm("pcap", "state", "c", 4.0, 20.0, 4.0)}
    group = {"workload": "churn", "baseline_cpu_per_op_us": 20.0, "arms": arms,
             "headline": [{"level": "state", "consumer": "c", "a": "tp", "b": "pc", "diff_pct": -10.0,
                           "ci_pct": [-11.0, -9.0], "decided": True, "outcome": "a_cheaper"}]}
    peer = {"backend": "bcc-tcpstates", "available": True, "trials": 3, "failed": 0, "lost": [5, 7, None],
            "metrics": {"cpu_per_op": {"median": 120.0}},
            "overhead": {"cpu_per_op": {"percent": {"median": 500.0, "low": 490.0, "high": 510.0}}}}
    return {"toggle": {"groups": [group]},
            "workloads": {"churn(connections=10000)": {"cells": {"churn/bcc-tcpstates": peer}},
                          "rr(transactions=1)": {"cells": {"rr/bcc-tcpstates": {**peer, "lost": [1]}}}},
            "visibility": {"columns": ["tracepoint", "pcap"], "rows": [
                {"cells": {"tracepoint": {"status": "seen"}, "pcap": {"status": "inferred"}}},
                {"cells": {"tracepoint": {"status": "seen"}, "pcap": {"status": "invisible"}}}]}}


def test_matrix_rows_carry_the_pairing_each_sides_cost_per_event_and_the_peers_of_that_workload():
    (entry,) = headline.matrix(_analysis())
    (row,) = entry["rows"]
    assert (row["level"], row["consumer"], row["diff_pct"]) == ("state", "c", -10.0)
    assert row["a_ns_per_event"] == 200.0 and row["b_ns_per_event"] == 1000.0  # 2 us / 10 events, 4 us / 4
    (peer,) = entry["peers"]  # churn's only, not rr's
    assert peer["backend"] == "bcc-tcpstates" and peer["lost"] is None  # one trial could not count: unknown
    assert entry["visibility"] == {"tracepoint": {"seen": 2, "inferred": 0, "invisible": 0, "rows": 2},
                                   "pcap": {"seen": 0, "inferred": 1, "invisible": 1, "rows": 2}}


def test_the_summary_is_readable_text_in_the_terminal_and_markdown():
    analysis = _analysis()
    text = "\n".join(headline.lines(analysis))
    assert "state c      -10.0% [-11.0, -9.0]" in text and "tracepoint cheaper" in text
    assert "peer bcc-tcpstates" in text and "+500.0% [+490.0, +510.0]" in text
    assert "50,000 ops/s" in text
    md = "\n".join(headline.markdown(analysis))
    assert md.startswith("## Summary") and "| state | c | -10.0% [-11.0, -9.0] | tracepoint cheaper |" in md


def test_stream_is_shown_in_megabytes():
    analysis = _analysis()
    group = analysis["toggle"]["groups"][0]
    group["workload"], group["baseline_cpu_per_op_us"] = "stream", 0.0005  # us per byte
    group["arms"]["none"]["rate"] = 2e9  # bytes/s
    assert "stream (no observer: 2000 MB/s, 0.50 ms CPU/MB)" in headline.lines(analysis)[1]
