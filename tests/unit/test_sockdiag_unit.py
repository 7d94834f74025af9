"""The sockdiag backend's inference from successive socket snapshots (synthetic, no root)."""

from harness.backends.sockdiag import _check_interval
from harness.decoders.sockdiag_infer import SnapshotDiff, misses, parse_tcp_snmp

LISTEN, SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT = 10, 2, 1, 4, 5, 8


def test_state_changes_between_snapshots_are_transitions_and_skipped_states_stay_unseen():
    diff = SnapshotDiff()
    diff.feed({1: LISTEN})
    diff.feed({1: LISTEN, 2: SYN_SENT})
    diff.feed({1: LISTEN, 2: ESTABLISHED, 3: ESTABLISHED})
    diff.feed({1: LISTEN, 2: FIN_WAIT2, 3: CLOSE_WAIT})  # 2 went through FIN_WAIT1 unseen
    diff.feed({1: LISTEN})
    result = diff.result()
    assert result["transitions"] == {"SYN_SENT->ESTABLISHED": 1, "ESTABLISHED->FIN_WAIT2": 1,
                                     "ESTABLISHED->CLOSE_WAIT": 1}
    assert result["first_seen"] == {"LISTEN": 1, "SYN_SENT": 1, "ESTABLISHED": 1}
    assert result["disappeared"] == {"FIN_WAIT2": 1, "CLOSE_WAIT": 1}
    assert (result["connections_seen"], result["listeners_seen"]) == (2, 1)
    assert (result["snapshots"], result["max_sockets_per_snapshot"]) == (5, 3)


def test_a_socket_seen_in_one_snapshot_only_is_a_connection_seen_with_no_transition():
    diff = SnapshotDiff()
    diff.feed({})
    diff.feed({9: FIN_WAIT1})
    diff.feed({})
    assert diff.result()["transitions"] == {}
    assert diff.result()["connections_seen"] == 1


def test_misses_are_the_kernels_opens_that_no_poll_saw():
    assert misses(1000, 48) == {"opened": 1000, "seen": 48, "missed": 952, "miss_rate": 0.952}
    assert misses(0, 0)["miss_rate"] is None
    assert misses(5, 7)["missed"] == 0  # never negative (a socket left from before the trial)


def test_snmp_tcp_lines_are_parsed_by_name():
    text = ("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
            "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab\n"
            "Tcp: 1 200 120000 -1 1000 3 2 1 0\n")
    assert parse_tcp_snmp(text) == {"ActiveOpens": 1000, "PassiveOpens": 3, "AttemptFails": 2, "EstabResets": 1}


def test_a_poll_interval_must_be_positive():
    assert _check_interval(0.0) is not None
    assert _check_interval(-1.0) is not None
    assert _check_interval(0.5) is None
