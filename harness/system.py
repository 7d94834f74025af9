"""Changes tpbench makes to the host, each undone on exit and recorded so `tpbench cleanup`
can undo it after a crash (SIGKILL leaves no chance to run finally blocks).

Everything lives under /run/tpbench (tmpfs: a reboot forgets it, as it forgets the changes):
  lock                 held (flock) by the one run allowed at a time; holds "pid run-id"
  tracefs-mounted      present while tpbench has mounted tracefs that was not mounted before;
                       holds "path pid" (the mounting process: a leftover only once it is dead)
  sysctl-<name>        the value a sysctl had before tpbench changed it
  counter-<run>-<wl>   a live workload's shared operation counter (toggled measurement)
and, outside it, the run's own cpuacct cgroup /sys/fs/cgroup/cpuacct/tpbench-<run> (run_cgroup).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

from .errors import UsageError

STATE_DIR = Path(os.environ.get("TPBENCH_STATE_DIR", "/run/tpbench"))
TRACEFS_PATHS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved here: nothing may be imported between fork and exec


def die_with_runner() -> None:
    """preexec_fn of every process tpbench starts: SIGKILL it when the runner dies, even by SIGKILL.

    PR_SET_PDEATHSIG survives execve (nsenter execs the agent: still covered); it fires when the
    thread that forked the child exits, so processes are started from the runner's main thread."""
    if _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        os._exit(126)


def require_root(what: str) -> None:
    """UsageError unless this process runs as root; `what` names what needs it."""
    if os.geteuid() != 0:
        raise UsageError(
            f"{what} needs root (network namespaces and BPF need CAP_SYS_ADMIN and CAP_NET_ADMIN); "
            "run it with sudo"
        )


@contextlib.contextmanager
def run_lock(run_id: str, wait_s: float = 0.0) -> Iterator[None]:
    """One run at a time: two runs would share the CPUs they measure and the sysctls they set.

    wait_s: how long to wait for the lock. A killed run's short-lived forked children (a counter
    read inside a namespace) hold its flock for a few milliseconds after it dies.
    """
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise UsageError(
                    f"another tpbench run holds {path} (pid and run: {holder}); wait for it or stop it"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {run_id}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


CPUACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
RUN_CGROUP_PREFIX = "tpbench-"


@contextlib.contextmanager
def run_cgroup(run_id: str) -> Iterator[Path | None]:
    """The run in its own cgroup v1 cpuacct group, so the host's CPU that is not the run's own (a
    neighbour, a daemon, kernel threads) is measured apart: root usage minus the run's.

    The runner moves itself in; every process it starts afterwards inherits the group. Yields the
    group's directory, or None where cgroup v1 cpuacct is not mounted (then nothing is split).
    On exit the runner moves back and removes the group; after a crash `tpbench cleanup` does."""
    if not (CPUACCT_ROOT / "cpuacct.usage").exists() or os.geteuid() != 0:
        yield None
        return
    group = CPUACCT_ROOT / f"{RUN_CGROUP_PREFIX}{run_id}"
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            (CPUACCT_ROOT / "cgroup.procs").write_text(str(os.getpid()))
        remove_cgroup(group, wait_s=2.0)


def remove_cgroup(group: Path, wait_s: float = 0.0) -> list[int]:
    """Kill what is left in a run cgroup (only tpbench puts processes there) and remove it;
    returns the pids killed. A group whose last task is still exiting is retried for wait_s."""
    killed = []
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return killed
        for pid in pids:
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        try:
            group.rmdir()
            return killed
        except OSError:
            if time.monotonic() > deadline:
                return killed
            time.sleep(0.02)


def tracefs_path() -> Path | None:
    """Where tracefs is mounted now, or None."""
    for path in TRACEFS_PATHS:
        if (path / "events").is_dir():
            return path
    return None


@contextlib.contextmanager
def tracefs_mounted() -> Iterator[Path]:
    """tracefs, mounted for the duration if it was not (as on this project's Firecracker hosts).

    bcc resolves tracepoint ids through tracefs (events/<category>/<name>/id), and the probe reads
    each tracepoint's argument layout from its format file. A mount tpbench made is unmounted on
    exit, and a marker lets `tpbench cleanup` unmount it after a crash.
    """
    existing = tracefs_path()
    if existing is not None:
        yield existing
        return
    require_root("mounting tracefs")
    target = TRACEFS_PATHS[0]
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    marker = STATE_DIR / "tracefs-mounted"
    marker.write_text(f"{target} {os.getpid()}")
    result = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(target)], capture_output=True, text=True
    )
    if result.returncode != 0:
        marker.unlink(missing_ok=True)
        raise UsageError(f"cannot mount tracefs on {target}: {result.stderr.strip()}")
    try:
        yield target
    finally:
        unmount_tracefs(target)
        marker.unlink(missing_ok=True)


def mount_holder_alive(marker: Path) -> bool:
    """Whether the process that wrote a tracefs-mounted marker still runs (then it is no leftover:
    it unmounts when it is done). Markers of older versions name no process: leftovers."""
    try:
        fields = marker.read_text().split()
        pid = int(fields[1])
    except (OSError, IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unmount_tracefs(target: Path) -> bool:
    """umount `target`, lazily (umount -l) if it is busy; whether it worked."""
    result = subprocess.run(["umount", str(target)], capture_output=True)
    if result.returncode != 0:  # busy (an open trace_pipe): detach it now, it goes when released
        result = subprocess.run(["umount", "-l", str(target)], capture_output=True)
    return result.returncode == 0


def read_sysctl(name: str) -> str:
    """A sysctl's value, stripped: `net.ipv4.tcp_fin_timeout` reads /proc/sys/net/ipv4/tcp_fin_timeout."""
    return Path("/proc/sys", name.replace(".", "/")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    """Write a sysctl as is (sysctl_set is the one that restores the old value)."""
    Path("/proc/sys", name.replace(".", "/")).write_text(value)


@contextlib.contextmanager
def sysctl_set(name: str, value: str) -> Iterator[str]:
    """Set a sysctl for the duration; restore the old value on exit (and via cleanup after a crash)."""
    old = read_sysctl(name)
    if old == value:
        yield old
        return
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    saved = STATE_DIR / f"sysctl-{name}"
    if not saved.exists():  # a crashed run's saved value is the true original: keep it
        saved.write_text(old)
    write_sysctl(name, value)
    try:
        yield old
    finally:
        write_sysctl(name, saved.read_text())
        saved.unlink(missing_ok=True)


def restore_leftovers() -> list[str]:
    """Undo what a crashed run left in STATE_DIR; returns what was done, one line each."""
    done: list[str] = []
    if not STATE_DIR.is_dir():
        return done
    for saved in sorted(STATE_DIR.glob("sysctl-*")):
        name = saved.name.removeprefix("sysctl-")
        value = saved.read_text()
        write_sysctl(name, value)
        saved.unlink()
        done.append(f"restored sysctl {name} = {value}")
    # instances and kprobe events outlive a tracefs mount, invisible while it is unmounted: first
    done += remove_stale_tracefs_instances()
    done += remove_stale_kprobe_events()
    marker = STATE_DIR / "tracefs-mounted"
    if marker.exists() and not mount_holder_alive(marker):
        target = Path(marker.read_text().split()[0])
        if (target / "events").is_dir() and unmount_tracefs(target):
            done.append(f"unmounted tracefs at {target} (mounted by a crashed run)")
        marker.unlink()
    for counter in sorted(STATE_DIR.glob("counter-*")):  # a live workload's operation counter
        counter.unlink(missing_ok=True)
        done.append(f"removed {counter}")
    for group in sorted(CPUACCT_ROOT.glob(f"{RUN_CGROUP_PREFIX}*")) if CPUACCT_ROOT.is_dir() else []:
        killed = remove_cgroup(group, wait_s=2.0)
        extra = f" (killed pids {', '.join(map(str, killed))})" if killed else ""
        done.append(f"removed cgroup {group}{extra}" if not group.exists() else f"left cgroup {group}: busy")
    return done


def remove_stale_tracefs_instances() -> list[str]:
    """rmdir tracefs instances named tpb* (the tracefs backend's, left by a crashed run).

    The kernel refuses (EBUSY) to remove an instance while a file in it is open, so the instance
    of a live run, whose reader holds trace_pipe_raw open, is left alone and said so."""
    done: list[str] = []
    tracefs = tracefs_path()
    if tracefs is None:
        return done
    for instance in sorted((tracefs / "instances").glob("tpb*")):
        try:
            instance.rmdir()
            done.append(f"removed tracefs instance {instance.name}")
        except OSError as exc:
            done.append(f"left tracefs instance {instance.name}: {exc.strerror}")
    return done


# The kprobe backend's kprobes are made in tracefs (kprobe_events), in a group of their own, so
# that kprobe_profile shows each one's misses (harness/backends/kprobe.py says why)
KPROBE_GROUP = "tpb"


def _append(path: Path, line: str) -> None:
    """One command to a tracefs control file, appended: kprobe_events opened with O_TRUNC (what
    open(..., "w") does) would remove every kprobe event on the system, other tools' too."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def add_kprobe_event(tracefs: Path, name: str, function: str) -> None:
    """A kprobe on `function`'s entry as the tracefs event tpb/<name>; OSError if refused."""
    _append(tracefs / "kprobe_events", f"p:{KPROBE_GROUP}/{name} {function}")


def remove_kprobe_event(tracefs: Path, name: str) -> None:
    """Remove tpb/<name>; OSError (EBUSY) while a perf event on it is still open."""
    _append(tracefs / "kprobe_events", f"-:{KPROBE_GROUP}/{name}")


def kprobe_events_ours(tracefs: Path | None = None) -> list[str]:
    """The names of the kprobe events in tpbench's group ([] without tracefs or kprobe_events)."""
    tracefs = tracefs or tracefs_path()
    path = tracefs / "kprobe_events" if tracefs is not None else None
    if path is None or not path.exists():
        return []
    names = []
    for line in path.read_text().splitlines():
        probe = line.split()[0] if line.strip() else ""  # "p:tpb/tpb_1234_state tcp_set_state"
        group, _, name = probe.partition(":")[2].partition("/")
        if group == KPROBE_GROUP:
            names.append(name)
    return names


def kprobe_profile(tracefs: Path) -> dict[str, tuple[int, int]]:
    """Every tracefs kprobe event's (hits, nmissed), by event name, from kprobe_profile."""
    profile = {}
    for line in (tracefs / "kprobe_profile").read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            profile[fields[0]] = (int(fields[1]), int(fields[2]))
    return profile


def remove_stale_kprobe_events() -> list[str]:
    """Remove kprobe events of tpbench's group (left by a crashed run); one left in use is said so."""
    tracefs, done = tracefs_path(), []
    for name in kprobe_events_ours(tracefs):
        try:
            remove_kprobe_event(tracefs, name)
            done.append(f"removed kprobe event {KPROBE_GROUP}/{name}")
        except OSError as exc:
            done.append(f"left kprobe event {KPROBE_GROUP}/{name}: {exc.strerror}")
    return done
