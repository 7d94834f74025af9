import socket
import struct

import pytest

from harness.backends.bpf_build import format_flags, needs_rst_reason_stub
from harness.backends.tracepoint import HOOKS, parse_hooks
from harness.decoders.tracefs_ring import native_u32
from harness.kernel import Capability, parse_format
from tests.unit.test_format import SEND_RESET


def test_hooks_parse_all_and_plus_joined_names():
    assert parse_hooks("all") == tuple(HOOKS)
    assert parse_hooks("state+destroy+state") == ("state", "destroy")
    with pytest.raises(ValueError, match="unknown hook bogus"):
        parse_hooks("state+bogus")


def test_addresses_are_compared_as_the_bpf_program_loads_them():
    raw = socket.inet_aton("198.18.0.2")
    assert native_u32("198.18.0.2") == struct.unpack("=I", raw)[0]
    # masking in that representation keeps the network bytes: /15 of 198.19.7.7 is 198.18.0.0
    mask, net = native_u32("255.254.0.0"), native_u32("198.18.0.0")
    assert native_u32("198.19.7.7") & mask == net
    assert native_u32("198.20.0.1") & mask != net


def _caps(fields_text: str, event: str = "tcp:tcp_send_reset") -> dict:
    return {f"tracepoint:{event}": Capability(event, True, "", {"fields": parse_format(fields_text)})}


def test_format_flags_carry_each_fields_size_from_the_running_kernel():
    flags = format_flags(_caps(SEND_RESET), ["tcp:tcp_send_reset"])
    assert "-DTP_tcp_send_reset_saddr_SIZE=28" in flags  # 6.10+: a sockaddr buffer
    assert "-DTP_tcp_send_reset_HAS_reason=1" in flags
    assert not any("sport" in f for f in flags)  # 6.18 has no sport field here


def test_rst_reason_stub_when_the_format_uses_the_enum_and_the_program_does_not_get_it_from_headers(tmp_path):
    caps = _caps(SEND_RESET)
    assert needs_rst_reason_stub(caps, str(tmp_path), net_headers=True)
    (tmp_path / "include/net").mkdir(parents=True)
    (tmp_path / "include/net/rstreason.h").write_text("enum sk_rst_reason {};")
    # kprobe.bpf.c includes net/request_sock.h, which brings the enum where the headers have it
    assert not needs_rst_reason_stub(caps, str(tmp_path), net_headers=True)
    # tracepoint.bpf.c and rawtp.bpf.c include no networking headers: the stub whatever the
    # headers (6.12 fallback headers on the 6.18 host failed with "incomplete type" without it)
    assert needs_rst_reason_stub(caps, str(tmp_path), net_headers=False)
    old = SEND_RESET.replace("enum sk_rst_reason reason", "int reason")
    assert not needs_rst_reason_stub(_caps(old), None, net_headers=False)
