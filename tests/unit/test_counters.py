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
    assert "task" not in seconds and "cpu" not in seconds  # no cpuacct readings: ticks only


def test_cpu_delta_prefers_exact_task_runtime_and_adds_irq_time_only_when_tasks_lack_it(monkeypatch):
    from harness import counters

    before = dict(user=0, nice=0, system=0, idle=0, iowait=0, irq=0, softirq=0, steal=0, task_ns=10**9)
    after = dict(before, system=50, softirq=25, task_ns=10**9 + 2_500_000)
    hz = __import__("os").sysconf("SC_CLK_TCK")
    monkeypatch.setattr(counters, "_IRQ_TIME", False)  # softirq already charged to tasks
    assert counters.cpu_seconds_delta(before, after)["cpu"] == 0.0025
    monkeypatch.setattr(counters, "_IRQ_TIME", True)  # tasks not charged: /proc/stat's exact softirq added
    seconds = counters.cpu_seconds_delta(before, after)
    assert seconds["task"] == 0.0025 and seconds["cpu"] == round(0.0025 + 25 / hz, 6)


def test_this_machine_reads_task_runtime_when_cpuacct_is_mounted():
    import os

    from harness import counters

    reading = counters.read_cpu_ticks()
    assert ("task_ns" in reading) == os.path.exists(counters.CPUACCT_USAGE)
