"""harness/btf.py against the running kernel's own BTF (every host and VM here has it), and the
raw_tp/tp_btf loader's use of it."""

from pathlib import Path

import pytest

from harness import btf
from harness.backends.bpf_build import RAW_FIELDS, kernel_version, raw_offset_flags

needs_btf = pytest.mark.skipif(not btf.VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux on this kernel")


@needs_btf
def test_sock_common_members_inside_anonymous_unions_resolve_to_their_fixed_layout():
    # skc_daddr/skc_rcv_saddr sit in an anonymous struct inside an anonymous union, skc_dport and
    # skc_num likewise: the layout every kernel since 4.x shares, so a wrong walk shows here
    found = btf.offsets({n: RAW_FIELDS[n][:2] for n in ("skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num",
                                                         "skc_family", "skc_state")})
    assert found == {"skc_daddr": 0, "skc_rcv_saddr": 4, "skc_dport": 12, "skc_num": 14, "skc_family": 16,
                     "skc_state": 18}


@needs_btf
def test_every_field_the_programs_read_is_found_and_lies_inside_its_struct():
    flags, found = raw_offset_flags()
    assert set(found) == set(RAW_FIELDS)
    assert found["inet_saddr"] > found["sk_protocol"] > 0  # inet_sock begins with struct sock
    # sock_common read up to skc_state (a byte at 18) in one go
    assert f"-DOFF_snd_cwnd={found['snd_cwnd']}" in flags
    spans = dict(flag[2:].split("=") for flag in flags if "SPAN" in flag or "BASE" in flag)
    assert int(spans["COMMON_SPAN"]) == 19 and 0 < int(spans["INET_SPAN"]) <= 64


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
    assert kernel_version() == kernel_version(Path("/proc/sys/kernel/osrelease").read_text().strip())
