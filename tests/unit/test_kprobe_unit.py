"""The kprobe backend's pure parts: resolving functions against kallsyms, the struct-read check's
verdicts, and comparing a kprobe cell with a tracepoint cell."""

from pathlib import Path

import pytest

from harness.tcp import EVENT_KINDS
from harness.analysis.crosscheck import cross_check
from harness.backends.bpf_build import bpf_source
from harness.backends.kprobe import CHECK_SLOTS, FIELD_NAMES, HOOKS, resolve_hooks, summarize_check
from harness.kernel import resolve_functions

# lines as /proc/kallsyms prints them on Debian's 6.1 (measured in the VM), plus invented cases
KALLSYMS = """\
ffffffff95089640 T tcp_set_state
ffffffff950ca910 T inet_sk_set_state
ffffffff95084ad0 T inet_csk_listen_start
ffffffff950a3330 t __tcp_retransmit_skb.part.0
ffffffff950a3bd0 T __tcp_retransmit_skb
ffffffff950a3e30 T tcp_retransmit_skb
ffffffff9509e6e0 t tcp_rtx_synack.isra.0
ffffffff950aa5c0 t tcp_v4_send_reset
ffffffff950a4950 T tcp_send_active_reset
ffffffff9509a060 T tcp_reset
ffffffff9509a060 d tcp_v4_destroy_sock
ffffffff9509bb60 T tcp_rcv_established_helper
"""


def test_kallsyms_resolution_tells_present_clone_and_absent_apart():
    found = resolve_functions(("tcp_set_state", "__tcp_retransmit_skb", "tcp_rtx_synack",
                               "tcp_v4_destroy_sock", "tcp_rcv_established"), KALLSYMS)
    assert found["tcp_set_state"].status == "present"
    # a partial clone beside the real entry point: the entry is what a probe attaches to
    assert found["__tcp_retransmit_skb"].status == "present"
    assert found["__tcp_retransmit_skb"].clones == ("__tcp_retransmit_skb.part.0",)
    # only an .isra clone: its arguments need not follow the C signature, never probed
    assert found["tcp_rtx_synack"].status == "clone"
    assert "tcp_rtx_synack.isra.0" in found["tcp_rtx_synack"].reason
    # a data symbol of that name is not a function; a longer name is not the function
    assert found["tcp_v4_destroy_sock"].status == "absent"
    assert found["tcp_rcv_established"].status == "absent"
    assert "inlined" in found["tcp_rcv_established"].reason


def test_each_hook_takes_its_first_present_candidate_and_says_why_not_per_hook():
    without_entry = KALLSYMS.replace("ffffffff950a3bd0 T __tcp_retransmit_skb\n", "")
    chosen, absent = resolve_hooks(tuple(HOOKS), without_entry)
    assert chosen["state"] == "tcp_set_state"
    assert chosen["retransmit"] == "tcp_retransmit_skb"  # the fallback candidate
    assert set(absent) == {"synack", "destroy", "probe"}
    assert "clone" in absent["synack"] and "inlined" in absent["destroy"]


def test_fentry_needs_the_function_in_btf():
    chosen, absent = resolve_hooks(("state", "retransmit"), KALLSYMS, has_btf=lambda f: f != "tcp_set_state")
    assert "state" in absent and "BTF" in absent["state"]
    assert chosen == {"retransmit": "__tcp_retransmit_skb"}


def _counts(**per_kind):
    counts = [0] * (len(EVENT_KINDS) * CHECK_SLOTS)
    for kind, slots in per_kind.items():
        base = EVENT_KINDS.index(kind) * CHECK_SLOTS
        for slot, n in slots.items():
            index = {"matched": 0, "tracepoint_only": 1, "kprobe_only": 2}.get(slot)
            counts[base + (index if index is not None else 3 + FIELD_NAMES.index(slot))] = n
    return counts


def test_agreeing_reads_make_no_fidelity_error():
    result = summarize_check(_counts(state_change={"matched": 2002}), {}, {"state_change"}, {}, None)
    assert result["errors"] == []
    assert result["per_kind"]["state_change"]["matched"] == 2002


def test_a_field_read_at_the_wrong_offset_is_a_fidelity_error():
    result = summarize_check(_counts(state_change={"matched": 10, "sport": 1992}), {}, {"state_change"}, {}, None)
    assert result["errors"] == ["state_change: sport read from the struct differs from the tracepoint's "
                                "in 1992 of 2002 events"]


def test_events_only_the_tracepoint_saw_are_an_error_and_conditional_kprobe_extras_a_note():
    result = summarize_check(
        _counts(state_change={"matched": 5, "tracepoint_only": 2}, reset_sent={"matched": 1}),
        {"reset_sent": 3}, {"state_change", "reset_sent"},
        {"reset_sent": "the tracepoint fires only for a full socket"}, None)
    assert any("tracepoint saw 2 events" in e for e in result["errors"])
    assert result["per_kind"]["reset_sent"]["kprobe_only"] == 3
    assert any("expected: the tracepoint fires only for a full socket" in n for n in result["notes"])
    assert not any("reset_sent" in e for e in result["errors"])



def test_where_skips_go_uncounted_a_few_unpaired_events_are_probable_silent_loss_and_many_a_missed_path():
    # a 6.1 CI run: the witnesses saw 2 of 2002 state changes and 1 of 1001 destroys the kprobes did not
    counts = _counts(state_change={"matched": 2000, "tracepoint_only": 2}, sock_destroy={"matched": 1000,
                                                                                          "tracepoint_only": 1})
    kinds = {"state_change", "sock_destroy"}
    silent = summarize_check(counts, {}, kinds, {}, None, observer_skips_counted=False, witness_skips_counted=False)
    assert silent["errors"] == []
    assert silent["probable_silent_loss"] == {"state_change": 2, "sock_destroy": 1}
    assert any("2 events the probed functions missed of 2002, probably lost silently" in n for n in silent["notes"])
    # the same counts where the kernel counts skipped runs: unexplained, so a missed path
    counted = summarize_check(counts, {}, kinds, {}, None)
    assert len(counted["errors"]) == 2 and "probable_silent_loss" not in counted
    # a path missed on every socket that takes it is an error on any kernel
    missed = summarize_check(_counts(state_change={"matched": 1800, "tracepoint_only": 200}), {}, {"state_change"},
                             {}, None, observer_skips_counted=False, witness_skips_counted=False)
    assert any("tracepoint saw 200 events" in e for e in missed["errors"]) and missed["probable_silent_loss"] == {}
    # a witness (classic tracepoint) that skipped: events only the observer reported
    witness = summarize_check(_counts(state_change={"matched": 2000}), {"state_change": 1}, {"state_change"}, {}, None,
                              observer_skips_counted=True, witness_skips_counted=False)
    assert witness["errors"] == [] and witness["probable_silent_loss"] == {"state_change": 1}
    # ... but only on a kind the two sides otherwise agree on
    unmatched = summarize_check(_counts(reset_sent={"tracepoint_only": 1}), {}, {"reset_sent"}, {}, None,
                                observer_skips_counted=False, witness_skips_counted=False)
    assert len(unmatched["errors"]) == 1


def test_events_only_the_witness_saw_are_a_counted_loss_up_to_what_the_observer_counted():
    # a 6.12 VM run: 2 state changes and a destroy the kprobes never reported, with recursion_misses
    # 0: the kprobe layer's nmissed counted them (read from tracefs's kprobe_profile)
    counts = _counts(state_change={"matched": 2000, "tracepoint_only": 2}, sock_destroy={"matched": 1000,
                                                                                          "tracepoint_only": 1})
    kinds = {"state_change", "sock_destroy"}
    counted = summarize_check(counts, {}, kinds, {}, None, observer_counted_lost={"state_change": 2, "sock_destroy": 1})
    assert counted["errors"] == [] and "probable_silent_loss" not in counted
    assert any("within the 2 the observer counted lost" in n for n in counted["notes"])
    # one more than counted: the loss is not what the counters say, so it is not explained away
    short = summarize_check(counts, {}, kinds, {}, None, observer_counted_lost={"state_change": 1, "sock_destroy": 1})
    assert [e for e in short["errors"] if e.startswith("state_change: the tracepoint saw 2 events")]
    assert not [e for e in short["errors"] if e.startswith("sock_destroy")]


def _cell(backend, transitions, ns, run_cnt, functions=None, hooks=()):
    details = {"bpf_stats": {"run_time_ns": ns, "run_cnt": run_cnt}, "hooks_attached": list(hooks)}
    if functions:
        details["functions"] = functions
    sides = {side: {"events": {"state_change": sum(t.values())}, "transitions": t}
             for side, t in transitions.items()}
    return {"workload": "churn", "backend": backend, "available": True,
            "trials": [{"index": 0, "status": "ok", "observed": {"sides": sides, "details": details}}]}


def test_cross_check_compares_per_side_transitions_and_cost():
    same = {"client": {"CLOSE->SYN_SENT": 200}, "server": {"CLOSE->LISTEN": 1}}
    kprobe = _cell("kprobe", same, 14000, 100, functions={"state": "tcp_set_state"})
    tracepoint = _cell("tracepoint", same, 10000, 100, hooks=("sock:inet_sock_set_state",))
    [check] = cross_check({"cells": [kprobe, tracepoint]})
    assert check["counts_equal"] and check["differences"] == []
    assert check["ns_per_event"] == {"kprobe": 140.0, "tracepoint": 100.0}
    assert check["ns_per_event_ratio"] == 1.4
    short = _cell("kprobe", {"client": {"CLOSE->SYN_SENT": 199}, "server": {"CLOSE->LISTEN": 1}}, 1, 1,
                  functions={"state": "tcp_set_state"})
    [check] = cross_check({"cells": [short, tracepoint]})
    assert not check["counts_equal"]
    assert "client CLOSE->SYN_SENT: kprobe 199, tracepoint 200" in check["differences"][0]


@pytest.mark.parametrize("probe_lost, tp_lost, within", [(1, 0, True), (0, 0, False), (None, 0, None)])
def test_cross_check_holds_a_shortfall_to_the_loss_each_side_counted(probe_lost, tp_lost, within):
    tracepoint = _cell("tracepoint", {"client": {"CLOSE->SYN_SENT": 200}}, 1, 1, hooks=("sock:inet_sock_set_state",))
    short = _cell("kprobe", {"client": {"CLOSE->SYN_SENT": 199}}, 1, 1, functions={"state": "tcp_set_state"})
    short["trials"][0]["observed"]["lost"], tracepoint["trials"][0]["observed"]["lost"] = probe_lost, tp_lost
    short["trials"][0]["ground_truth"] = {"expected": {"client": {"events": {"state_change": 200}}}}
    [check] = cross_check({"cells": [short, tracepoint]})
    assert (check["events_short"], check["events_extra"]) == (1, 0)  # one state change, not also its transition
    assert check["within_counted_loss"] is within


def test_shared_bpf_code_is_pasted_into_the_program_bcc_compiles():
    # bcc rewrites map calls only in its main file: an #include of the shared header would fail
    source = bpf_source(Path("harness/backends/kprobe.bpf.c").resolve())
    assert b'#include "' not in source
    assert source.count(b"static __always_inline int handle(") == 1  # once, despite two includes
    assert b"TRACEPOINT_PROBE(sock, inet_sock_set_state)" in source  # the witness


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_has_a_program_in_the_bpf_source(hook):
    text = Path("harness/backends/kprobe.bpf.c").read_text()
    assert f"#ifdef KHOOK_{hook}\n" in text


def test_uapi_prelude_copies_only_the_opaque_structs_bccs_own_uapi_copy_lacks(tmp_path):
    from harness.backends.kprobe import uapi_prelude

    common = tmp_path / "linux-headers-9.9-common" / "include/uapi/linux"
    common.mkdir(parents=True)
    (common / "bpf.h").write_text("struct bpf_timer {\n\t__u64 __opaque[2];\n} __attribute__((aligned(8)));\n"
                                  "struct bpf_wq {\n\t__u64 __opaque[2];\n} __attribute__((aligned(8)));\n")
    (tmp_path / "linux-headers-9.9-amd64").mkdir()
    # the exact -amd64 tree finds its -common half; bcc 0.26 knows bpf_timer, not bpf_wq
    prelude = uapi_prelude(str(tmp_path / "linux-headers-9.9-amd64")).decode()
    assert prelude == "struct bpf_wq {\n\t__u64 __opaque[2];\n} __attribute__((aligned(8)));\n"
    assert uapi_prelude(str(tmp_path / "nothing-here")) == b"" and uapi_prelude(None) == b""
