from harness.counters import KEY_COUNTERS, cpu_seconds_delta, parse_snmp, snmp_delta

# Shape of /proc/net/snmp and /proc/net/netstat on Linux (abridged, real column names).
SNMP = """\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 7 3 1 0 2 100 120 4 0 5 0
Udp: InDatagrams NoPorts
Udp: 9 1
"""
NETSTAT = """\
TcpExt: SyncookiesSent TW TCPSynRetrans
TcpExt: 0 11 2
"""


def test_parse_names_counters_as_nstat_does():
    counters = parse_snmp(SNMP) | parse_snmp(NETSTAT)
    assert counters["TcpActiveOpens"] == 7
    assert counters["TcpMaxConn"] == -1
    assert counters["UdpNoPorts"] == 1
    assert counters["TcpExtTCPSynRetrans"] == 2


def test_delta_keeps_changed_tcp_counters_and_every_key_counter():
    before = parse_snmp(SNMP) | parse_snmp(NETSTAT)
    after = dict(before, TcpActiveOpens=1007, TcpCurrEstab=50, UdpNoPorts=99, TcpExtTW=12)
    delta = snmp_delta(before, after)
    assert delta["TcpActiveOpens"] == 1000
    assert delta["TcpExtTW"] == 1
    assert delta["TcpPassiveOpens"] == 0  # a key counter, present although unchanged
    assert "TcpCurrEstab" not in delta  # a gauge: its difference means nothing
    assert "UdpNoPorts" not in delta
    assert set(KEY_COUNTERS) - {"TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose"} <= set(delta)


def test_cpu_delta_sums_busy_time_without_idle():
    before = dict(user=0, nice=0, system=0, idle=0, iowait=0, irq=0, softirq=0, steal=0)
    after = dict(before, user=100, system=50, softirq=25, idle=400, iowait=10)
    seconds = cpu_seconds_delta(before, after)
    import os

    hz = os.sysconf("SC_CLK_TCK")
    assert seconds["busy"] == round(175 / hz, 4)
    assert seconds["softirq"] == round(25 / hz, 4)
