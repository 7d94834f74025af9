from pathlib import Path

from harness.headers import find_headers


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _debian_pair(src: Path, version: str) -> None:
    _tree(src / f"linux-headers-{version}-common", {
        "include/linux/kconfig.h": "common kconfig",
        "include/linux/tcp.h": "common tcp",
        "Makefile": "common makefile",
    })
    _tree(src / f"linux-headers-{version}-amd64", {
        "include/generated/autoconf.h": f"autoconf {version}",
        "Makefile": "flavour makefile",
    })


def test_exact_headers_win_when_the_kernel_has_its_own(tmp_path):
    _tree(tmp_path / "modules/6.1.0-9-amd64/build", {"Makefile": "x"})
    _debian_pair(tmp_path / "src", "6.1.0-9")
    found = find_headers("6.1.0-9-amd64", tmp_path / "modules", tmp_path / "src", tmp_path / "cache")
    assert found.kind == "exact"
    assert found.environment() == {}


def test_fallback_merges_both_debian_halves_newest_first(tmp_path):
    src = tmp_path / "src"
    _debian_pair(src, "6.1.0-9")
    _debian_pair(src, "6.1.0-56")
    found = find_headers("6.18.0-fc", tmp_path / "modules", src, tmp_path / "cache")
    assert found.kind == "fallback"
    assert found.package_version == "6.1.0-56-amd64"  # numeric order: 56 > 9
    merged = Path(found.path)
    assert found.environment() == {"BCC_KERNEL_SOURCE": str(merged)}
    # both halves present: either alone fails to compile
    assert (merged / "include/linux/kconfig.h").read_text() == "common kconfig"
    assert (merged / "include/generated/autoconf.h").read_text() == "autoconf 6.1.0-56"
    # the flavour's generated files take precedence over the common tree
    assert (merged / "Makefile").read_text() == "flavour makefile"
    assert "struct layouts read from these headers must be checked" in found.detail


def test_fallback_is_rebuilt_only_when_its_sources_change(tmp_path):
    src = tmp_path / "src"
    _debian_pair(src, "6.1.0-56")
    first = find_headers("6.18", tmp_path / "m", src, tmp_path / "cache")
    stamp = Path(first.path) / ".tpbench-merged"
    mtime = stamp.stat().st_mtime_ns
    find_headers("6.18", tmp_path / "m", src, tmp_path / "cache")
    assert stamp.stat().st_mtime_ns == mtime


def test_a_lone_half_is_not_a_fallback(tmp_path):
    _tree(tmp_path / "src/linux-headers-6.1.0-56-amd64", {"include/generated/autoconf.h": "x"})
    found = find_headers("6.18", tmp_path / "m", tmp_path / "src", tmp_path / "cache")
    assert found.kind == "none"
    assert "linux-headers-amd64" in found.detail
