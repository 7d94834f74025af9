"""The peers' output parsers, on lines as the Debian tools print them (bpfcc-tools 0.26, bpftrace 0.17)."""

from harness.backends.peers import LOST_LINE, TOOLS

SIDES = {"198.18.0.1": "client", "198.18.0.2": "server"}

TCPSTATES = """\
SKADDR           C-PID C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS
ffff88811fcba500 29934 python3    198.18.0.1      0     198.18.0.2      5555  CLOSE       -> SYN_SENT    0.000
ffff88811fcba500 29934 python3    198.18.0.1      39472 198.18.0.2      5555  SYN_SENT    -> ESTABLISHED 0.048
ffff88811fcbb780 0     swapper/1  198.18.0.2      5555  198.18.0.1      39472 LISTEN      -> SYN_RECV    0.000
ffff88811fcbb780 31    my tool    198.18.0.2      5555  198.18.0.1      39472 SYN_RECV    -> ESTABLISHED 0.005
ffff88811fcbd340 29933 curl       127.0.0.1       47610 127.0.0.1       1     SYN_SENT    -> CLOSE       0.043
"""


def test_tcpstates_rows_become_transitions_by_local_address_and_foreign_sockets_are_left_out():
    parsed = TOOLS["bcc-tcpstates"].parse(TCPSTATES.splitlines(), SIDES)
    assert parsed.rows == 5 and parsed.foreign == 1 and parsed.unparsed == []
    assert parsed.transitions["client"] == {"CLOSE->SYN_SENT": 1, "SYN_SENT->ESTABLISHED": 1}
    assert parsed.transitions["server"] == {"LISTEN->SYN_RECV": 1, "SYN_RECV->ESTABLISHED": 1}  # "my tool": a comm with a space
    assert parsed.events["server"] == {"state_change": 2}
    assert TOOLS["bcc-tcpstates"].ready(TCPSTATES.splitlines()[0])


def test_tcplife_counts_sessions_and_flags_byte_counts_read_at_wrong_offsets():
    lines = ["PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS",
             "29934 python3    198.18.0.1      39472 198.18.0.2      5555  0     0 0.13",
             "29934 python3    198.18.0.2      5555  198.18.0.1      39472 18014398505303382     0 0.14",
             "29933 curl       127.0.0.1       47610 127.0.0.1       1     0     0 0.05"]
    parsed = TOOLS["bcc-tcplife"].parse(lines, SIDES)
    assert parsed.events == {"client": {"session": 1}, "server": {"session": 1}}
    assert parsed.foreign == 1 and parsed.extra["implausible_byte_counts"] == 1


def test_tcpretrans_counts_retransmits_per_side():
    lines = ["Tracing retransmits ... Hit Ctrl-C to end",
             "TIME     PID     IP LADDR:LPORT          T> RADDR:RPORT          STATE",
             "00:28:50 0       4  198.18.0.1:40000     R> 198.18.0.2:5201      ESTABLISHED",
             "00:28:50 0       4  198.18.0.1:40000     R> 198.18.0.2:5201      ESTABLISHED",
             "00:28:51 0       4  198.18.0.2:5201      L> 198.18.0.1:40000     ESTABLISHED"]
    parsed = TOOLS["bcc-tcpretrans"].parse(lines, SIDES)
    assert parsed.events["client"] == {"retransmit": 2}
    assert parsed.events["server"] == {"tail_loss_probe": 1}
    assert parsed.unparsed == []


def test_bpftrace_map_rows_carry_counts_and_state_numbers_become_names():
    lines = ["Attaching 2 probes...", "ready", "", "", "@ready: 1", "",
             "@states[198.18.0.1, 7, 2]: 40000", "@states[198.18.0.2, 10, 3]: 39998",
             "@states[127.0.0.1, 2, 7]: 5", "garbage"]
    parsed = TOOLS["bpftrace"].parse(lines, SIDES)
    assert parsed.transitions["client"] == {"CLOSE->SYN_SENT": 40000}
    assert parsed.transitions["server"] == {"LISTEN->SYN_RECV": 39998}
    assert parsed.events["server"] == {"state_change": 39998}
    assert parsed.foreign == 5 and parsed.unparsed == ["garbage"]


def test_bcc_perf_reader_loss_lines_are_read():
    stderr = "Possibly lost 12 samples\nsomething else\nPossibly lost 3 samples\n"
    assert sum(int(n) for n in LOST_LINE.findall(stderr)) == 15
