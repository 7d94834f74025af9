"""Kernel headers for bcc's compiler: exact when the kernel has its own, a Debian fallback otherwise.

bcc compiles BPF C with clang against kernel headers, found at /lib/modules/$(uname -r)/build (and
.../source). This project's hosts run a 6.18 kernel that ships none, and no CONFIG_IKHEADERS.
The fallback is the newest Debian linux-headers installed under /usr/src. Debian splits them in
two trees: linux-headers-<ver>-<flavour> (generated: autoconf.h, the .config) and
linux-headers-<ver>-common (include/linux, arch/*/include ...). bcc takes one directory through
BCC_KERNEL_SOURCE, and either half alone fails (kconfig.h or generated/autoconf.h missing), so we
build one merged tree of symlinks in a cache directory, without touching /lib/modules.

Why a fallback is safe for tracepoints: a tracepoint's argument struct comes from tracefs
(events/<category>/<name>/format) on the running kernel, not from these headers. A program that
reads kernel structs itself (a kprobe reading struct sock) depends on the headers' layouts, which
may differ from the running kernel's; such reads must be checked, never trusted.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("TPBENCH_CACHE_DIR", Path.home() / ".cache" / "tpbench"))


@dataclass(frozen=True)
class KernelHeaders:
    kind: str  # "exact" | "fallback" | "none"
    path: str | None  # the tree bcc compiles against
    package_version: str | None  # e.g. "6.1.0-56-amd64" for a fallback
    detail: str
    bcc_kernel_source: str | None = None  # what BCC_KERNEL_SOURCE must be set to, if anything

    def to_dict(self) -> dict:
        return asdict(self)

    def environment(self) -> dict[str, str]:
        """Environment variables bcc needs to find these headers."""
        return {"BCC_KERNEL_SOURCE": self.bcc_kernel_source} if self.bcc_kernel_source else {}


def _version_key(text: str) -> tuple:
    return tuple(int(n) if n.isdigit() else n for n in re.split(r"[.-]", text))


def _debian_pairs(src_root: Path) -> list[tuple[str, Path, Path]]:
    """(version-flavour, flavour tree, common tree) for each complete Debian header pair."""
    pairs = []
    for tree in src_root.glob("linux-headers-*"):
        match = re.fullmatch(r"linux-headers-(.+)-(?!common$)([a-z0-9_]+)", tree.name)
        if not match or not tree.is_dir():
            continue
        version, flavour = match.groups()
        common = src_root / f"linux-headers-{version}-common"
        if (tree / "include" / "generated").is_dir() and (common / "include" / "linux").is_dir():
            pairs.append((f"{version}-{flavour}", tree, common))
    pairs.sort(key=lambda pair: _version_key(pair[0]), reverse=True)
    return pairs


def merge_trees(common: Path, flavour: Path, target: Path) -> None:
    """target := symlinks to every file of `common`, then of `flavour` over it.

    Built beside the target and renamed into place, so a half-built tree is never used.
    """
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for source in (common, flavour):
        for directory, subdirs, files in os.walk(source, followlinks=False):
            relative = Path(directory).relative_to(source)
            (staging / relative).mkdir(parents=True, exist_ok=True)
            # links to directories (scripts -> ../../lib/linux-kbuild-*/scripts) are kept as links
            entries = files + [d for d in subdirs if (Path(directory) / d).is_symlink()]
            for name in entries:
                link = staging / relative / name
                if link.is_symlink() or link.exists():
                    if link.is_dir() and not link.is_symlink():
                        shutil.rmtree(link)
                    else:
                        link.unlink()
                link.symlink_to((Path(directory) / name).resolve())
    (staging / ".tpbench-merged").write_text(f"{common}\n{flavour}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def header_file(headers_path: str | None, relative: str) -> Path | None:
    """`relative` (e.g. include/net/rstreason.h) in a headers tree: a merged fallback tree holds
    everything; Debian's exact -<flavour> tree (/lib/modules/<release>/build) leaves the generic
    headers to its -common half beside it."""
    if headers_path is None:
        return None
    root = Path(headers_path)
    common = root.with_name(re.sub(r"-[a-z0-9]+$", "-common", root.name))
    return next((c / relative for c in (root, common) if (c / relative).exists()), None)


def find_headers(
    release: str | None = None,
    modules_root: Path = Path("/lib/modules"),
    src_root: Path = Path("/usr/src"),
    cache_dir: Path | None = None,
    build: bool = True,
) -> KernelHeaders:
    """The headers bcc should use for `release` (default: the running kernel)."""
    release = release or os.uname().release
    exact = modules_root / release / "build"
    if (exact / "include").exists() or (exact / "Makefile").exists():
        return KernelHeaders(
            kind="exact",
            path=str(exact.resolve()),
            package_version=release,
            detail=f"{exact} matches the running kernel {release}",
        )
    pairs = _debian_pairs(src_root)
    if not pairs:
        return KernelHeaders(
            kind="none",
            path=None,
            package_version=None,
            detail=(
                f"no {exact} and no Debian linux-headers-*-<flavour>/-common pair under {src_root}; "
                "install linux-headers-amd64 (make setup)"
            ),
        )
    version, flavour, common = pairs[0]
    target = (cache_dir or CACHE_DIR) / "kernel-headers" / version
    stamp = target / ".tpbench-merged"
    if build and not (stamp.exists() and stamp.read_text() == f"{common}\n{flavour}\n"):
        merge_trees(common, flavour, target)
    return KernelHeaders(
        kind="fallback",
        path=str(target),
        package_version=version,
        detail=(
            f"fallback: running kernel {release} has no headers; using Debian's {version} "
            f"({common.name} + {flavour.name} merged). Tracepoint arguments come from tracefs, so "
            "tracepoint programs are unaffected; struct layouts read from these headers must be checked"
        ),
        bcc_kernel_source=str(target),
    )


def header_candidates(release: str | None = None) -> list[KernelHeaders]:
    """Every tree bcc could compile against here, best first: the exact headers, else each Debian
    pair newest first. A program that includes kernel headers itself (the bcc tools include
    net/sock.h) may fail on a newer tree than bcc knows (bcc 0.26's helpers against 6.12's
    linux/bpf.h), where an older tree compiles: callers try them in order."""
    first = find_headers(release)
    if first.kind != "fallback":
        return [first]
    out = [first]
    for version, flavour, common in _debian_pairs(Path("/usr/src"))[1:]:
        target = CACHE_DIR / "kernel-headers" / version
        stamp = target / ".tpbench-merged"
        if not (stamp.exists() and stamp.read_text() == f"{common}\n{flavour}\n"):
            merge_trees(common, flavour, target)
        out.append(KernelHeaders(kind="fallback", path=str(target), package_version=version,
                                 detail=f"fallback: Debian's {version} ({common.name} + {flavour.name} merged)",
                                 bcc_kernel_source=str(target)))
    return out
