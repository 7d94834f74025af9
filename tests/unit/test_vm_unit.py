"""tpbench vm's checks that need no VM: reading a kernel image's release, and a missing qemu."""

import os
import subprocess
import sys
import struct
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness import vm
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


def test_a_boot_that_never_started_is_tried_once_more_within_the_timeout(tmp_path, monkeypatch):
    """A CI run's emulated 6.12 boot once ended before the guest ran anything (qemu exited 255,
    no output): such a boot is tried once more, the record says so, and the failed log is kept."""
    import json

    import harness.system

    release = "6.12.0-test-amd64"
    monkeypatch.setattr(vm, "kernel_release", lambda image: release)
    monkeypatch.setattr(vm, "vng_binary", lambda: Path("/bin/true"))
    monkeypatch.setattr(vm, "QEMU", "sh")
    monkeypatch.setattr(harness.system, "require_root", lambda what: None)
    real_is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda self: str(self) == f"/lib/modules/{release}" or real_is_dir(self))
    timeouts = []

    def fake_vng(image, command, rwdir, cpus, memory, kvm, log, timeout_s, started_marker=None, on_boot=None):
        timeouts.append(timeout_s)
        if len(timeouts) == 1:
            log.write_text("")  # what the failed CI boot left: nothing
            return 255, 3.0
        log.write_text("guest ran\n")
        started_marker.touch()
        (rwdir / "release").write_text(release)
        (rwdir / "rc").write_text("0")
        (rwdir / "stderr").write_text("")
        run = rwdir / "results" / "20261207T000000-abcd"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({
            "run_id": run.name, "status": "complete", "kernel": {"release": release},
            "headers": {"kind": "exact", "package_version": None}, "cells": []}))
        return 0, 40.0

    monkeypatch.setattr(vm, "_vng", fake_vng)
    said = []
    summary = vm.run_in_vm(Path("/nonexistent/vmlinuz"), ["run", "-b", "none", "-w", "churn"], tmp_path, 2, "2G",
                           100.0, "off", said.append)
    assert summary["vm"]["boot_attempts"] == 2 and timeouts == [100.0, 97.0]
    assert any("booting it once more" in line for line in said)
    [target] = tmp_path.iterdir()
    assert (target / "vm-failed-boot-1.log").exists() and (target / "vm.log").read_text() == "guest ran\n"
