"""The whole analysis of one run record, as analysis.json holds it (`tpbench report` writes it)."""

from __future__ import annotations

from typing import Any

from . import crosscheck, flowmatch, headline, inkernel, toggle_stats
from .answers import tracepoint_vs_pcap
from .attribution import attribution
from .fidelity import fidelity
from .stats import analyse
from .sweeps import sweeps
from .visibility import visibility


def full_analysis(run: dict[str, Any]) -> dict[str, Any]:
    """stats.analyse() plus fidelity, visibility, attribution, flows, the answers, the toggled
    measurement, the in-kernel cost, the kprobe/fentry cross-check and the sweeps: analysis.json, from run.json alone."""
    result = analyse(run)
    result["fidelity"] = fidelity(run)
    result["visibility"] = visibility(run)
    result["attribution"] = attribution(run)
    result["flows"] = flowmatch.aggregate(run)
    result["answers"] = {key: tracepoint_vs_pcap(key, entry) for key, entry in result["workloads"].items()}
    toggled = toggle_stats.analyse(run, result["decide_pp"])
    result["toggle"] = {"method": toggled["method"], "groups": toggled["groups"]}
    result["headline"], result["aa"] = toggled["headline"], toggled["aa"]
    result["matrix"] = headline.matrix(result)
    result["in_kernel"] = inkernel.analyse(run)
    result["cross_check"] = crosscheck.cross_check(run)
    operations = {c["workload"]: c.get("operation") or "operation" for c in run["cells"]}
    result["sweeps"] = sweeps(result, operations)
    return result
