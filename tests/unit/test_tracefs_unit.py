"""The tracefs backend's decoding of trace_pipe_raw pages and its kernel filters, on synthetic
pages built the way kernel/trace/ring_buffer.c lays them out (no root, no tracefs needed)."""

import socket
import struct

import pytest

from harness.backends.tracefs import _check_instance, event_filter
from harness.decoders.tracefs_ring import (
    DEFAULT_LAYOUT,
    RB_MISSED_EVENTS,
    RB_MISSED_STORED,
    PageCounter,
    entries,
    make_decoder,
    native_u32,
    page_header_layout,
)
from harness.kernel import parse_format

# The 6.18 formats (tracefs events/.../format), fields only
SET_STATE_FORMAT = """
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;
"""
SEND_RESET_FORMAT = """
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;
"""
HEADER_PAGE = """	field: u64 timestamp;	offset:0;	size:8;	signed:0;
	field: local_t commit;	offset:8;	size:8;	signed:1;
	field: int overwrite;	offset:8;	size:1;	signed:1;
	field: char data;	offset:16;	size:4080;	signed:0;
"""
CLIENT, SERVER, OTHER = "198.18.7.1", "198.18.7.2", "127.0.0.1"
SET_STATE_ID, SEND_RESET_ID = 2287, 2290


def set_state(old, new, saddr, daddr, pid=42, family=2, protocol=6) -> bytes:
    entry = bytearray(72)
    struct.pack_into("<HBBi", entry, 0, SET_STATE_ID, 0, 0, pid)
    struct.pack_into("<iiHHHH", entry, 16, old, new, 40000, 7000, family, protocol)
    entry[32:36] = socket.inet_aton(saddr)
    entry[36:40] = socket.inet_aton(daddr)
    return bytes(entry)


def send_reset(saddr, daddr, pid=7) -> bytes:
    entry = bytearray(88)
    struct.pack_into("<HBBi", entry, 0, SEND_RESET_ID, 0, 0, pid)
    struct.pack_into("<iI", entry, 24, 1, 14)
    for offset, address, port in ((32, saddr, 7000), (60, daddr, 40000)):
        struct.pack_into("<H", entry, offset, 2)  # sockaddr_in: family (host order) ...
        struct.pack_into(">H", entry, offset + 2, port)  # ... port (network order), address
        entry[offset + 4 : offset + 8] = socket.inet_aton(address)
    return bytes(entry)


def small(data: bytes, delta: int = 5) -> bytes:
    """type_len = 4-byte words of data (<= 28), time_delta in the upper 27 bits."""
    assert len(data) % 4 == 0 and len(data) // 4 <= 28
    return struct.pack("<I", (delta << 5) | len(data) // 4) + data


def large(data: bytes) -> bytes:
    """type_len 0: a u32 length (including itself) before the data."""
    return struct.pack("<II", 7 << 5, len(data) + 4) + data


def page(*events: bytes, missed: int | None = None, size: int = 4096) -> bytes:
    body = b"".join(events)
    commit = len(body)
    tail = b""
    if missed is not None:
        # ring_buffer_read_page() does local_add(RB_MISSED_STORED) and local_add(RB_MISSED_EVENTS):
        # `1 << 31` is an int, so it is sign-extended (0xffffffff80000000) into the 64-bit local_t
        commit += RB_MISSED_STORED + 0xFFFFFFFF80000000
        assert commit & RB_MISSED_EVENTS
        tail = struct.pack("<Q", missed)
    raw = struct.pack("<QQ", 123456789, commit) + body + tail
    return raw.ljust(size, b"\0")


def counter() -> PageCounter:
    decoders = {
        SET_STATE_ID: ("state_change", make_decoder("sock:inet_sock_set_state", parse_format(SET_STATE_FORMAT))),
        SEND_RESET_ID: ("reset_sent", make_decoder("tcp:tcp_send_reset", parse_format(SEND_RESET_FORMAT))),
    }
    return PageCounter(decoders, native_u32(CLIENT), native_u32(SERVER))


def test_header_page_layout_is_read_from_tracefs_text():
    assert page_header_layout(HEADER_PAGE) == DEFAULT_LAYOUT


def test_small_large_padding_and_time_extend_events_are_walked_by_their_headers():
    time_extend = struct.pack("<II", (3 << 5) | 30, 99)
    discarded = struct.pack("<II", (1 << 5) | 29, 12) + b"\xaa" * 8  # padding with a length: skipped
    raw = page(small(set_state(2, 1, CLIENT, SERVER)), time_extend, discarded,
               large(set_state(7, 2, CLIENT, SERVER) + b"\0" * 48))
    found, missed, flag = entries(raw)
    assert [(end - start) for start, end in found] == [72, 120]
    assert (missed, flag) == (0, False)


def test_end_of_page_padding_stops_the_walk():
    raw = page(small(set_state(2, 1, CLIENT, SERVER)), struct.pack("<I", 29), small(set_state(1, 4, CLIENT, SERVER)))
    assert len(entries(raw)[0]) == 1


def test_missed_events_flags_survive_the_sign_extended_commit():
    found, missed, flag = entries(page(small(set_state(2, 1, CLIENT, SERVER)), missed=17))
    assert (len(found), missed, flag) == (1, 17, True)


def test_a_page_whose_header_claims_more_data_than_it_holds_is_an_error():
    raw = struct.pack("<QQ", 0, 5000).ljust(4096, b"\0")
    with pytest.raises(ValueError, match="5000 bytes"):
        entries(raw)


def test_counts_per_side_kind_and_transition_with_the_bpf_backends_predicate():
    c = counter()
    n = c.feed(page(
        small(set_state(7, 2, CLIENT, SERVER, pid=100)),  # client: CLOSE->SYN_SENT
        small(set_state(10, 3, SERVER, CLIENT, pid=0)),  # server: LISTEN->SYN_RECV
        small(set_state(7, 2, OTHER, OTHER)),  # another topology's: filtered here
        small(set_state(7, 2, CLIENT, SERVER, protocol=132)),  # SCTP: not TCP, not counted
        small(set_state(7, 2, CLIENT, SERVER, family=10)),  # IPv6: filtered
        small(send_reset(SERVER, CLIENT)),  # 28-byte sockaddr addresses
        small(send_reset(OTHER, OTHER)),
        small(struct.pack("<HBBi", 9999, 0, 0, 1).ljust(16, b"\0")),  # an id we did not enable
    ))
    assert n == 8
    assert c.counts == {("client", "state_change", 7, 2): 1, ("server", "state_change", 10, 3): 1,
                        ("server", "reset_sent", 1, 1): 1}
    assert c.filtered == {"state_change": 2, "reset_sent": 1}
    assert c.not_tcp == 1
    assert c.unknown_types == {9999: 1}
    assert c.attribution[("client", "state_change", 100)] == 1


def test_a_destination_in_the_pair_with_a_foreign_source_counts_as_other():
    c = counter()
    c.feed(page(small(set_state(1, 8, OTHER, SERVER))))
    assert c.counts == {("other", "state_change", 1, 8): 1}


def test_native_u32_is_the_network_bytes_read_little_endian():
    assert native_u32("198.18.0.1") == 0x010012C6


def test_kernel_filters_use_addresses_where_the_format_has_u8_4_fields():
    fields = parse_format(SET_STATE_FORMAT)
    assert event_filter("sock:inet_sock_set_state", fields, "198.18.0.1", "198.18.0.2") == (
        "family == 2 && protocol == 6 && (saddr == 0x010012c6 || saddr == 0x020012c6 || "
        "daddr == 0x010012c6 || daddr == 0x020012c6)")
    # 28-byte sockaddr buffers and no family field: nothing the kernel filter can compare
    assert event_filter("tcp:tcp_send_reset", parse_format(SEND_RESET_FORMAT), "198.18.0.1", "198.18.0.2") is None


@pytest.mark.parametrize("name, ok", [("", True), ("tpb-mine", True), ("mine", False), ("tpb/../x", False),
                                      ("tpb x", False), ("..", False)])
def test_instance_names_are_tpb_prefixed_plain_names(name, ok):
    assert (_check_instance(name) is None) == ok


def test_a_cleared_local_address_is_attributed_by_its_peer():
    from harness.decoders.tracefs_ring import _side

    client, server, elsewhere = 1, 2, 9
    assert _side(client, server, client, server) == "client"
    assert _side(server, client, client, server) == "server"
    assert _side(0, server, client, server) == "client"  # destroy after tcp_disconnect()
    assert _side(0, client, client, server) == "server"
    assert _side(elsewhere, 0, client, server) == "other"
    assert _side(elsewhere, server, client, server) == "other"  # a foreign local address is not cleared
