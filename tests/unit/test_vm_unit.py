"""tpbench vm's checks that need no VM: reading a kernel image's release, and a missing qemu."""

import os
import subprocess
import sys
import struct
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.vm import kernel_release
from tests.helpers import REPO

DEBIAN_KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))


def _bzimage(tmp_path: Path, version: bytes) -> Path:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x300)  # the string at 0x200 + 0x300
    image[0x500:0x500 + len(version)] = version
    path = tmp_path / "vmlinuz"
    path.write_bytes(bytes(image))
    return path


def test_release_comes_from_the_bzimage_setup_header(tmp_path):
    path = _bzimage(tmp_path, b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0")
    assert kernel_release(path) == "6.1.0-56-amd64"


def test_a_file_that_is_not_a_kernel_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UsageError, match="not an x86 Linux kernel image"):
        kernel_release(path)


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no /boot/vmlinuz-* (make setup installs linux-image-amd64)")
def test_the_installed_debian_kernel_names_its_modules_directory():
    release = kernel_release(DEBIAN_KERNELS[-1])
    assert DEBIAN_KERNELS[-1].name == f"vmlinuz-{release}"


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no /boot/vmlinuz-* (make setup installs linux-image-amd64)")
def test_missing_qemu_is_one_line_and_exit_2():
    env = dict(os.environ, PATH="/nonexistent")  # no qemu-system-x86_64 anywhere on it
    result = subprocess.run([sys.executable, "-m", "harness.cli", "vm", "--kernel", str(DEBIAN_KERNELS[-1]),
                             "--", "run", "-b", "none"], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("tpbench: error: qemu-system-x86_64 not found: install Debian's "
                                     "qemu-system-x86 (make setup)")
