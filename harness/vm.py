"""`tpbench vm`: the same suite on another kernel, in a virtme-ng VM on this machine.

virtme-ng (`vng`, PyPI) boots a kernel image under qemu with the host's filesystem as the guest's
root (9p, read-only), so the guest runs this very checkout and .venv. The run writes into a
shared read-write folder (--rwdir); run.json comes back to results/<run-id>-vm-<release>/ with a
`vm` section: the kernel image and release, cpus, memory, and whether the VM was emulated.

KVM: on this project's hosts /dev/kvm exists but KVM guests hang in early boot, so KVM is tried
with a short boot first (remembered per host kernel and qemu) and TCG emulation used when it does
not come back. Under emulation everything runs ~10-50x slower (a bcc compile ~2.5 min): every
timing from an emulated VM is labelled as such, and compares only with other emulated timings.

Faults are one line and exit status 2 (UsageError): no such kernel image, not a bzImage, no qemu,
no vng, a VM that never ran tpbench (did not boot) or did not finish in --timeout. qemu runs in its
own process group, killed whole on timeout, error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import cbuild
from .analysis.crosscheck import cross_check
from .errors import UsageError
from .headers import CACHE_DIR
from .record import write_json_atomic
from .system import die_with_runner

REPO = Path(__file__).resolve().parent.parent
QEMU = "qemu-system-x86_64"
KVM_PROBE_TIMEOUT_S = 45.0  # a KVM boot with the host fs takes a few seconds; TCG ~40 s
BOOT_ATTEMPTS = 2  # an emulated boot that ends before the guest runs anything is tried once more
EMULATION_LABEL = ("emulated (qemu TCG, no KVM): timings are 10-50x slower than native and "
                   "compare only with other emulated runs")


def kernel_release(image: Path) -> str:
    """The release string a bzImage carries in its setup header (what `file` prints)."""
    try:
        with image.open("rb") as f:
            header = f.read(0x10000)  # the version string lies within the real-mode setup code
    except FileNotFoundError:
        raise UsageError(f"kernel image {image} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"kernel image {image} is a directory, not a kernel image") from None
    except OSError as exc:
        raise UsageError(f"cannot read kernel image {image}: {exc.strerror}") from None
    if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
        raise UsageError(f"{image} is not an x86 Linux kernel image (no bzImage 'HdrS' setup header)")
    offset = struct.unpack_from("<H", header, 0x20E)[0] + 0x200
    if offset >= len(header):
        raise UsageError(f"{image}: kernel version string out of range in its setup header")
    return header[offset:].split(b"\0", 1)[0].split(b" ", 1)[0].decode(errors="replace")


def vng_binary() -> Path:
    """virtme-ng's vng beside this Python (the .venv's); UsageError if it is not there."""
    vng = Path(sys.executable).with_name("vng")
    if not vng.exists():
        raise UsageError("virtme-ng's vng is not in this .venv: run 'make setup'")
    return vng


def _environment() -> dict[str, str]:
    # vng runs virtme-run from PATH: the venv's bin first
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _vng(image: Path, command: str, rwdir: Path, cpus: int, memory: str, kvm: bool,
         log: Path, timeout_s: float, started_marker: Path | None = None,
         on_boot: Callable[[float], None] | None = None) -> tuple[int | None, float]:
    """Boot `image`, run `command` as root, return (exit status or None on timeout, seconds)."""
    argv = [str(vng_binary()), "--run", str(image), "--user", "root", "--cpus", str(cpus),
            "--memory", memory, "--rwdir", str(rwdir), "--disable-monitor", "--exec", command]
    if not kvm:
        argv.insert(3, "--disable-kvm")
    begin = time.monotonic()
    with log.open("w") as sink:
        # its own session: one killpg ends vng and the qemu it started
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   env=_environment(), start_new_session=True, cwd=REPO,
                                   preexec_fn=die_with_runner)
        booted = False
        try:
            while True:
                try:
                    status = process.wait(timeout=0.5)
                    return status, time.monotonic() - begin
                except subprocess.TimeoutExpired:
                    pass
                if not booted and started_marker is not None and started_marker.exists():
                    booted = True
                    if on_boot:
                        on_boot(time.monotonic() - begin)
                if time.monotonic() - begin > timeout_s:
                    _kill_group(process)
                    return None, time.monotonic() - begin
        finally:
            _kill_group(process)  # also on Ctrl-C / SIGTERM (Interrupted) and errors


def kvm_usable(image: Path, say: Callable[[str], None]) -> tuple[bool, str]:
    """Whether a KVM guest boots here: /dev/kvm opens and a short KVM boot comes back."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return False, f"/dev/kvm unusable ({exc.strerror})"
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    cache = CACHE_DIR / "vm-kvm.json"
    key = f"{os.uname().release} {qemu_version}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["usable"], known[key]["why"] + " (remembered)"
    say(f"vm: trying KVM (a {KVM_PROBE_TIMEOUT_S:.0f} s test boot) ...")
    with tempfile.TemporaryDirectory(prefix="tpbench-kvm-") as scratch:
        marker = Path(scratch) / "ok"
        status, seconds = _vng(image, f"touch {marker}", Path(scratch), 1, "512M", True,
                               Path(scratch) / "log", KVM_PROBE_TIMEOUT_S)
        usable = status == 0 and marker.exists()
    why = (f"a KVM test boot ran a command in {seconds:.1f} s" if usable else
           f"a KVM test boot did not come back within {KVM_PROBE_TIMEOUT_S:.0f} s (guests hang in early boot here)")
    known[key] = {"usable": usable, "why": why}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known))
    return usable, why


GUEST_SCRIPT = """\
#!/bin/sh
# tpbench inside the VM (generated by harness/vm.py). Root, host filesystem read-only.
OUT={out}
touch $OUT/booted
uname -r > $OUT/release
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mkdir -p /run/netns /run/tpbench
export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp TPBENCH_STATE_DIR=/run/tpbench TPBENCH_CACHE_DIR=$OUT/cache
cd {repo}
{tpbench} {args} -o $OUT/results > $OUT/stdout 2> $OUT/stderr
echo $? > $OUT/rc
"""


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def run_in_vm(image: Path, tpbench_args: list[str], out_root: Path, cpus: int, memory: str,
              timeout_s: float, kvm_mode: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Boot, run `tpbench <args>` in the guest, bring run.json back; returns the summary."""
    if not tpbench_args or tpbench_args[0] != "run":
        raise UsageError("tpbench vm runs 'tpbench run ...' in the VM: give the run arguments after '--', "
                         "e.g. tpbench vm --kernel /boot/vmlinuz-6.1.0-57-amd64 -- run -b kprobe -w churn")
    if any(a in ("-o", "--out") or a.startswith("--out=") for a in tpbench_args):
        raise UsageError("tpbench vm: give -o/--out to 'tpbench vm', not to the run inside it")
    image = image.resolve() if image.exists() else image
    release = kernel_release(image)
    if shutil.which(QEMU) is None:
        raise UsageError(f"{QEMU} not found: install Debian's qemu-system-x86 (make setup)")
    vng_binary()
    from .system import require_root

    require_root("tpbench vm")  # the guest runs as root from the host's files; qemu's KVM too
    modules = Path("/lib/modules") / release
    if not modules.is_dir():
        raise UsageError(f"no {modules}: the guest kernel {release} needs its modules on this host "
                         "(install its linux-image package)")
    if kvm_mode == "on":
        kvm, why = True, "--kvm on"
    elif kvm_mode == "off":
        kvm, why = False, "--kvm off"
    else:
        kvm, why = kvm_usable(image, say)
    emulated = not kvm
    say(f"vm: kernel {release} ({image}), {cpus} CPUs, {memory}, "
        f"{'KVM' if kvm else 'emulated (TCG)'}: {why}")
    work = Path(tempfile.mkdtemp(prefix="tpbench-vm-"))
    try:
        (work / "cache" / "bin").mkdir(parents=True)
        (work / "results").mkdir()
        # The C helpers are built here (host gcc) and handed to the guest's cache, which starts empty
        for name in cbuild.HELPERS:
            try:
                binary = cbuild.binary(name)
                shutil.copy2(binary, work / "cache" / "bin" / binary.name)
            except cbuild.BuildError as exc:  # the guest builds it itself if it must
                say(f"vm: {name} not prebuilt ({exc})")
        tpbench = Path(sys.executable).with_name("tpbench")
        script = work / "guest.sh"
        script.write_text(GUEST_SCRIPT.format(out=work, repo=REPO, tpbench=tpbench,
                                              args=" ".join(_quote(a) for a in tpbench_args)))
        script.chmod(0o755)
        boot: dict[str, float] = {}

        def booted(seconds: float) -> None:
            boot["s"] = seconds
            say(f"vm: guest up after {seconds:.1f} s ({'emulated' if emulated else 'KVM'}); running tpbench ...")

        # An emulated boot now and then ends before the guest runs anything (qemu exits 255, no
        # output; 1 of 12 full emulated boots on 2026-12-07): such a boot is tried once more, within the
        # same --timeout, and the record says so (vm.boot_attempts; the failed log is kept)
        seconds, attempts = 0.0, 0
        while True:
            attempts += 1
            status, took = _vng(image, f"sh {script}", work, cpus, memory, kvm, work / "vm.log",
                                timeout_s - seconds, started_marker=work / "booted", on_boot=booted)
            seconds += took
            if status is None or (work / "booted").exists() or attempts == BOOT_ATTEMPTS:
                break
            (work / "vm.log").rename(work / f"vm-failed-boot-{attempts}.log")
            say(f"vm: the guest never booted (qemu exited {status} after {took:.0f} s): booting it once more")
        if status is None:
            raise UsageError(f"the VM did not finish within --timeout {timeout_s:.0f} s (qemu killed; "
                             f"{'booted' if 's' in boot else 'never booted'})")
        if not (work / "rc").exists():
            tail = [line for line in (work / "vm.log").read_text(errors="replace").splitlines() if line.strip()]
            last = tail[-1].strip() if tail else "no output"
            raise UsageError(f"the VM exited ({status}) before tpbench finished: "
                             f"{'kernel did not boot? ' if 'booted' not in os.listdir(work) else ''}"
                             f"last line: {last[:200]}")
        rc = int((work / "rc").read_text().strip() or 1)
        guest_release = (work / "release").read_text().strip()
        stderr = (work / "stderr").read_text(errors="replace")
        runs = sorted((work / "results").glob("*/run.json"))
        if not runs:
            lines = [line for line in stderr.splitlines() if line.strip()]
            raise UsageError(f"tpbench in the VM exited {rc} without a run record: "
                             f"{lines[-1] if lines else 'no message'}")
        record = json.loads(runs[-1].read_text())
        vm_info = {
            "kernel_image": str(image),
            "release": guest_release,
            "cpus": cpus,
            "memory": memory,
            "emulated": emulated,
            "accelerator": "kvm" if kvm else "tcg",
            "accelerator_reason": why,
            "boot_s": round(boot.get("s", 0.0), 1),
            "boot_attempts": attempts,
            "vm_total_s": round(seconds, 1),
            "guest_exit_status": rc,
            "timings": EMULATION_LABEL if emulated else "KVM guest: timings comparable to native, "
                                                         "with virtualisation overhead",
        }
        record["vm"] = vm_info
        for cell in record.get("cells", []):
            cell["timing"] = "emulated" if emulated else "kvm"
            for trial in cell.get("trials", []):
                trial["emulated"] = emulated
        target = out_root / f"{record['run_id']}-vm-{guest_release}"
        target.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target / "run.json", record)
        (target / "guest-stderr.log").write_text(stderr)
        shutil.copy2(work / "vm.log", target / "vm.log")
        for failed in work.glob("vm-failed-boot-*.log"):
            shutil.copy2(failed, target / failed.name)
        return {
            "run_id": record["run_id"],
            "run_json": str(target / "run.json"),
            "status": record.get("status"),
            "kernel": record["kernel"]["release"],
            "headers": {"kind": record["headers"]["kind"], "package_version": record["headers"]["package_version"]},
            "vm": vm_info,
            "cross_check": cross_check(record),  # analysis.json's, printed by `tpbench vm`
            "cells": record["cells"],
            "exit_status": rc,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
