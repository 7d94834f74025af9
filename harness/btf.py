"""Struct layouts of the running kernel, from its BTF (/sys/kernel/btf/vmlinux), through libbpf.

bcc compiles against whatever headers it finds, and on this project's hosts those are Debian's
6.1 headers under a 6.18 kernel: struct sock_common has kept its layout for a decade, but struct
sock, inet_sock, tcp_sock and sk_buff have not (tcp_sock was regrouped by cache line in 6.8). A
program that reads struct fields through pointers (raw_tp and tp_btf, which get only TP_PROTO's
arguments) therefore takes its offsets from here, as -DOFF_<struct>_<member>=n: CO-RE by hand.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_FUNC = 4, 5, 8, 12


class BtfError(RuntimeError):
    """No usable kernel BTF, or a struct member it does not have."""


class _Type(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _Member(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _Btf:
    def __init__(self) -> None:
        path = ctypes.util.find_library("bpf")
        if not path:
            raise BtfError("libbpf not found (libbpf1)")
        if not VMLINUX.exists():
            raise BtfError(f"{VMLINUX} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF")
        lib = ctypes.CDLL(path)
        lib.btf__load_vmlinux_btf.restype = ctypes.c_void_p
        lib.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
        lib.btf__find_by_name_kind.restype = ctypes.c_int32
        lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.btf__type_by_id.restype = ctypes.POINTER(_Type)
        lib.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.btf__name_by_offset.restype = ctypes.c_char_p
        self.lib = lib
        self.handle = lib.btf__load_vmlinux_btf()
        if not self.handle:
            raise BtfError(f"libbpf could not load {VMLINUX}")

    def find(self, name: str, kind: int) -> int | None:
        type_id = self.lib.btf__find_by_name_kind(self.handle, name.encode(), kind)
        return type_id if type_id > 0 else None

    def _members(self, type_id: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of a struct or union's members."""
        t = self.lib.btf__type_by_id(self.handle, type_id).contents
        kind, vlen, kind_flag = (t.info >> 24) & 0x1F, t.info & 0xFFFF, t.info >> 31
        if kind not in (KIND_STRUCT, KIND_UNION):
            return []
        array = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(_Type), ctypes.POINTER(_Member * vlen)).contents
        out = []
        for m in array:
            bits = m.offset & 0xFFFFFF if kind_flag else m.offset
            out.append((self.lib.btf__name_by_offset(self.handle, m.name_off).decode(), m.type, bits))
        return out

    def _resolve(self, type_id: int) -> int:
        """Through typedefs and modifiers (const, volatile) to the struct or union itself."""
        for _ in range(16):
            t = self.lib.btf__type_by_id(self.handle, type_id).contents
            if (t.info >> 24) & 0x1F in (KIND_STRUCT, KIND_UNION):
                return type_id
            type_id = t.size_or_type
        return type_id

    def member_offset(self, struct: str, member: str) -> int:
        """Byte offset of `member` in `struct`, looking into anonymous structs and unions."""
        type_id = self.find(struct, KIND_STRUCT)
        if type_id is None:
            raise BtfError(f"struct {struct} not in the kernel's BTF")
        found = self._search(type_id, member, 0)
        if found is None:
            raise BtfError(f"struct {struct} has no member {member} in the kernel's BTF")
        if found % 8:
            raise BtfError(f"{struct}.{member} is a bitfield (bit {found}): it has no byte address")
        return found // 8

    def _search(self, type_id: int, member: str, base: int) -> int | None:
        for name, member_type, bits in self._members(type_id):
            if name == member:
                return base + bits
            if not name:  # anonymous struct or union: its members are the parent's
                inner = self._search(self._resolve(member_type), member, base + bits)
                if inner is not None:
                    return inner
        return None


@functools.lru_cache(maxsize=1)
def kernel_btf() -> _Btf:
    """The running kernel's BTF through libbpf, loaded once (BtfError without libbpf or /sys/kernel/btf/vmlinux)."""
    return _Btf()


def offsets(fields: dict[str, tuple[str, str]]) -> dict[str, int]:
    """{name: (struct, member)} -> {name: byte offset} on the running kernel (BtfError if any is missing)."""
    btf = kernel_btf()
    return {name: btf.member_offset(struct, member) for name, (struct, member) in fields.items()}
