"""harness/btf.py against the running kernel's own BTF (every host and VM here has it), and the
raw_tp/tp_btf loader's use of it."""

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import btf
from harness.backends.bpf_build import RAW_FIELDS, kernel_version, raw_offset_flags

needs_btf = pytest.mark.skipif(not btf.VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux on this kernel")
BPFTOOL = shutil.which("bpftool") or shutil.which("bpftool", path="/usr/sbin:/sbin")


@functools.cache
def bpftool_offsets() -> dict[str, int]:
    """Byte offset of every RAW_FIELDS member in its struct, read by another BTF reader: bpftool
    (libbpf) dumps the kernel's BTF, and members are found here through anonymous structs and
    unions by their bit offsets."""
    raw = subprocess.run([BPFTOOL, "btf", "dump", "file", str(btf.VMLINUX), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    types: dict[int, dict] = {}
    current = None
    for line in raw.splitlines():
        head = re.match(r"\[(\d+)\] (\w+) '([^']*)'", line)
        if head:
            current = types[int(head.group(1))] = {"kind": head.group(2), "name": head.group(3), "members": []}
            continue
        member = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if member and current is not None:
            current["members"].append((member.group(1), int(member.group(2)), int(member.group(3))))

    def bits(type_id: int, field: str) -> int | None:
        for name, member_type, offset in types[type_id]["members"]:
            if name == field:
                return offset
            if name == "(anon)":
                inner = bits(member_type, field)
                if inner is not None:
                    return offset + inner
        return None

    found = {}
    for name, (struct_, member, _size) in RAW_FIELDS.items():
        [struct_id] = [i for i, t in types.items() if t["kind"] == "STRUCT" and t["name"] == struct_]
        offset = bits(struct_id, member)
        assert offset is not None and offset % 8 == 0, (struct_, member, offset)
        found[name] = offset // 8
    return found


@needs_btf
def test_sock_common_members_inside_anonymous_unions_resolve_to_their_fixed_layout():
    # skc_daddr/skc_rcv_saddr sit in an anonymous struct inside an anonymous union, skc_dport and
    # skc_num likewise: the layout every kernel since 4.x shares, so a wrong walk shows here
    found = btf.offsets({n: RAW_FIELDS[n][:2] for n in ("skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num",
                                                         "skc_family", "skc_state")})
    assert found == {"skc_daddr": 0, "skc_rcv_saddr": 4, "skc_dport": 12, "skc_num": 14, "skc_family": 16,
                     "skc_state": 18}


@needs_btf
@pytest.mark.skipif(BPFTOOL is None, reason="bpftool is not installed (make setup installs it)")
def test_every_field_the_programs_read_is_at_the_offset_another_btf_reader_finds():
    flags, found = raw_offset_flags()
    theirs = bpftool_offsets()
    assert found == theirs
    assert theirs["inet_saddr"] > theirs["sk_protocol"] > 0  # inet_sock begins with struct sock
    # what the programs are compiled with: each offset as bpftool reads it, and the spans they copy
    defined = dict(flag[2:].split("=") for flag in flags)
    assert {name: int(defined[f"OFF_{name}"]) for name in RAW_FIELDS} == theirs
    # sock_common read up to skc_state (a byte at 18) in one go; inet_sock from inet_saddr (4 bytes)
    # to the end of inet_sport (2 bytes), which follows it in every kernel's struct inet_sock
    assert theirs["inet_sport"] > theirs["inet_saddr"]
    assert int(defined["COMMON_SPAN"]) == 19
    assert int(defined["INET_BASE"]) == theirs["inet_saddr"]
    assert int(defined["INET_SPAN"]) == theirs["inet_sport"] + 2 - theirs["inet_saddr"] <= 64


@needs_btf
def test_a_member_the_kernel_does_not_have_is_one_clear_error():
    with pytest.raises(btf.BtfError, match="struct sock has no member tpbench_nothing"):
        btf.kernel_btf().member_offset("sock", "tpbench_nothing")
    with pytest.raises(btf.BtfError, match="struct tpbench_nothing not in the kernel's BTF"):
        btf.kernel_btf().member_offset("tpbench_nothing", "x")


def test_kernel_versions_parse_from_release_strings():
    assert kernel_version("6.1.0-27-amd64") == (6, 1)
    assert kernel_version("6.18.44-fc-v1147") == (6, 18)
    assert kernel_version("6.12.48+deb12-amd64") == (6, 12)
    assert kernel_version("garbage") == (0, 0)
    # with no argument, the running kernel's: the first two numbers of its release, read here apart
    major, minor = Path("/proc/sys/kernel/osrelease").read_text().split(".")[:2]
    assert kernel_version() == (int(major), int(re.match(r"\d+", minor).group()))
