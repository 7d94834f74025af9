import gzip
import json
import os
from pathlib import Path

import pytest

from harness.kernel import SEED_TRACEPOINTS
from harness.system import tracefs_mounted, tracefs_path
from tests.helpers import headers_kind, tpbench

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def probe():
    mounted_before = tracefs_path()
    result = tpbench("kernel", "--json", check=True)
    assert tracefs_path() == mounted_before, "the probe must leave tracefs as it found it"
    return json.loads(result.stdout)["capabilities"]


def _config(name: str) -> str | None:
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
        if line == f"# {name} is not set":
            return "n"
    return None


def test_each_seed_tracepoint_is_available_exactly_when_tracefs_has_it(probe):
    with tracefs_mounted() as tracefs:
        for name in SEED_TRACEPOINTS:
            category, event = name.split(":")
            exists = (tracefs / "events" / category / event / "format").exists()
            cap = probe[f"tracepoint:{name}"]
            assert cap["available"] == exists, name
            if exists:
                assert cap["data"]["fields"], name
                assert "fallback headers are harmless" in cap["reason"]


def test_inet_sock_set_state_fields_are_the_ones_backends_read(probe):
    fields = {f["name"] for f in probe["tracepoint:sock:inet_sock_set_state"]["data"]["fields"]}
    assert {"skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr", "daddr"} <= fields


def test_kprobes_answer_agrees_with_the_kernel_config(probe):
    pmu = Path("/sys/bus/event_source/devices/kprobe").exists()
    assert probe["kprobes"]["available"] == pmu
    if _config("CONFIG_KPROBES") == "n":
        assert not probe["kprobes"]["available"]
        assert "CONFIG_KPROBES is not set" in probe["kprobes"]["reason"]


def test_fentry_answer_comes_from_a_real_load(probe):
    cap = probe["fentry"]
    if cap["available"]:
        assert "loaded" in cap["reason"]
    else:  # the kernel's own errno, not a guess
        assert "failed with E" in cap["reason"] or "BTF" in cap["reason"]


def test_headers_bcc_and_root_are_reported(probe):
    assert probe["root"]["available"] is (os.geteuid() == 0)
    assert probe["bcc"]["available"], probe["bcc"]["reason"]
    assert probe["headers"]["data"]["kind"] == headers_kind()
    if probe["headers"]["data"]["kind"] == "fallback":
        assert probe["headers"]["data"]["bcc_kernel_source"]
