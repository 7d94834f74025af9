"""Bad input gets one line on stderr naming the problem, exit status 2, and no traceback."""

import pytest

from tests.helpers import leftovers, tpbench

BAD_INPUT = [
    (["run", "-b", "nosuch"], "unknown backend 'nosuch' (valid: none"),
    (["run", "-w", "nosuch"], "unknown workload 'nosuch' (valid: churn"),
    (["run", "-b", "none,"], "empty name"),
    (["run", "-b", "none,none"], "backend none given twice"),
    (["run", "-p", "connections"], "malformed parameter 'connections'"),
    (["run", "-p", "connections=-5"], "must be >= 1, not -5"),
    (["run", "-p", "connections=0"], "must be >= 1, not 0"),
    (["run", "-p", "connections=many"], "takes int, not 'many'"),
    (["run", "-p", "conections=5"], "unknown parameter 'conections'"),
    (["run", "-p", "churn.bogus=1"], "churn has no parameter 'bogus'"),
    (["run", "-p", "kprobe.mode=x"], "names 'kprobe', which is not selected"),
    (["run", "-p", "connections=1,connections=2"], "given twice"),
    (["run", "-b", "pcap", "-p", "filter=syn"], "parameter 'filter' of pcap must be one of state, full, not 'syn'"),
    (["run", "-b", "pcap", "-p", "pcap.consumer=java"], "must be one of python, tcpdump, c, not 'java'"),
    (["run", "-b", "pcap", "-p", "snaplen=20"], "parameter 'snaplen' of pcap must be >= 54, not 20"),
    (["run", "-b", "pcap", "-p", "pcap.bogus=1"], "pcap has no parameter 'bogus'"),
    (["run", "--trials", "0"], "must be >= 1, not 0"),
    (["run", "--trials", "two"], "not a whole number"),
    (["run", "--frobnicate"], "unrecognized arguments"),
    (["nosuchcommand"], "invalid choice"),
    (["kernel", "--yaml"], "unrecognized arguments"),
    # the workloads' own parameters
    (["run", "-w", "loss", "-p", "every=0"], "must be >= 2, not 0"),
    (["run", "-w", "synack", "-p", "every=-4"], "must be >= 2, not -4"),
    (["run", "-w", "rr", "-p", "request=0"], "must be >= 1, not 0"),
    (["run", "-w", "stream", "-p", "message=0"], "must be >= 1, not 0"),
    (["run", "-w", "resets", "-p", "refused=-1"], "must be >= 0, not -1"),
    (["run", "-w", "resets", "-p", "aborts=0,refused=0"], "resets needs aborts or refused >= 1"),
    (["run", "-w", "churn", "-p", "closer=nobody"], "must be one of server, client"),
    (["run", "-w", "loss", "-p", "offloads=sometimes"], "takes a boolean"),
    (["run", "-w", "stream", "-p", "every=10"], "unknown parameter 'every'"),
    (["run", "-w", "rr", "-p", "loss.every=10"], "names 'loss', which is not selected"),
    # tpbench vm: the kernel image and the arguments are checked before anything boots
    (["vm", "--kernel", "/nonexistent", "--", "run", "-b", "kprobe"], "kernel image /nonexistent does not exist"),
    (["vm", "--kernel", "/etc/hostname", "--", "run", "-b", "kprobe"], "is not an x86 Linux kernel image"),
    (["vm", "--kernel", "/etc", "--", "run"], "is a directory, not a kernel image"),
    (["vm", "--kernel", "/nonexistent", "--", "list"], "runs 'tpbench run ...' in the VM"),
    (["vm", "--kernel", "/nonexistent", "--", "run", "-o", "/tmp/x"], "give -o/--out to 'tpbench vm'"),
    (["vm", "--", "run"], "the following arguments are required: --kernel"),
    (["vm", "--kernel", "/nonexistent", "--cpus", "0", "--", "run"], "must be >= 1, not 0"),
    (["run", "-b", "kprobe", "-p", "kprobe.hooks=state+nosuch"], "unknown hook nosuch"),
    (["run", "-b", "fentry", "-p", "check=maybe"], "takes a boolean"),
    # a backend with its own parameters: name[param=value,...]
    (["run", "-b", "tracepoint[flavour=tp"], "unbalanced brackets"),
    (["run", "-b", "tracepoint[flavour=tp]]"], "unbalanced brackets"),
    (["run", "-b", "tracepoint[]"], "expected name[param=value,...]"),
    (["run", "-b", "tracepoint[flavour]"], "malformed parameter 'flavour'"),
    (["run", "-b", "tracepoint[flavour=nosuch]"], "must be one of tp, raw_tp, tp_btf"),
    (["run", "-b", "tracepoint[connections=5]"], "tracepoint has no parameter 'connections'"),
    (["run", "-b", "tracepoint,tracepoint[flavour=raw_tp]"], "a setting already given"),
    (["run", "-b", "nosuch[mode=stream]"], "unknown backend 'nosuch'"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    result = tpbench(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tpbench: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_command_prints_help_and_exits_2():
    result = tpbench()
    assert result.returncode == 2
    assert "examples:" in result.stdout


def test_help_has_examples():
    result = tpbench("run", "--help")
    assert result.returncode == 0
    assert "tpbench run -b none -w churn -p connections=2000 --json" in result.stdout


@pytest.mark.root
def test_not_root_is_refused_in_one_line_and_touches_nothing():
    before = leftovers()
    result = tpbench("run", "-b", "none", "-w", "churn", "-p", "connections=10", "-o", "/tmp", user="65534")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "tpbench: error: tpbench run needs root (network namespaces and BPF need CAP_SYS_ADMIN and "
        "CAP_NET_ADMIN); run it with sudo"
    ]
    assert leftovers() == before


TRACEPOINT_BAD_INPUT = [
    (["run", "-b", "tracepoint", "-p", "mode=fast"], "must be one of stream, aggregate"),
    (["run", "-b", "tracepoint", "-p", "hooks=state+bogus"], "unknown hook bogus"),
    (["run", "-b", "tracepoint", "-p", "tracepoint.buffer_kib=1"], "must be >= 16"),
    (["run", "-b", "tracepoint", "-p", "wakeup_batch=0"], "must be >= 1"),
    (["run", "-b", "tracepoint", "-p", "transport=pipe"], "must be one of auto, ringbuf, perf"),
    (["run", "-b", "tracepoint-empty", "-p", "mode=stream"], "unknown parameter 'mode'"),
    (["run", "-b", "tracepoint", "-p", "consumer=c,transport=perf"], "cannot be used with transport=perf"),
    (["run", "-b", "tracepoint", "-p", "consumer=rust"], "must be one of auto, c, python"),
    (["run", "-b", "tracepoint", "-p", "batch=3"], "must be a power of two"),
]


@pytest.mark.parametrize("argv, message", TRACEPOINT_BAD_INPUT, ids=[" ".join(a) for a, _ in TRACEPOINT_BAD_INPUT])
def test_tracepoint_bad_input_is_one_line_and_exit_2(argv, message):
    result = tpbench(*argv)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "Traceback" not in result.stderr


TRACEFS_SOCKDIAG_BAD_INPUT = [
    (["run", "-b", "sockdiag", "-p", "interval_ms=0"], "parameter 'interval_ms' of sockdiag: must be > 0"),
    (["run", "-b", "sockdiag", "-p", "interval_ms=-5"], "must be > 0"),
    (["run", "-b", "sockdiag", "-p", "interval_ms=often"], "takes float, not 'often'"),
    (["run", "-b", "tracefs", "-p", "instance=mine"], "must start with 'tpb'"),
    (["run", "-b", "tracefs", "-p", "instance=tpb/../x"], "an instance name is letters"),
    (["run", "-b", "tracefs", "-p", "tracefs.buffer_kib=1"], "must be >= 64, not 1"),
    (["run", "-b", "tracefs", "-p", "consumer=text"], "must be one of record, live"),
    (["run", "-b", "tracefs", "-p", "poll_ms=0"], "must be >= 0.1, not 0"),
    (["run", "-b", "tracefs", "-p", "hooks=state+bogus"], "unknown hook bogus"),
]


@pytest.mark.parametrize("argv, message", TRACEFS_SOCKDIAG_BAD_INPUT,
                         ids=[" ".join(a) for a, _ in TRACEFS_SOCKDIAG_BAD_INPUT])
def test_tracefs_and_sockdiag_bad_input_is_one_line_and_exit_2(argv, message):
    result = tpbench(*argv)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "Traceback" not in result.stderr
