"""The C helpers' builder: one binary per source and flags, so an unrelated edit of harness/tcp.py
rebuilds nothing (a VM sees the host's files read-only and must find what was built), while a
changed source or model number makes a new one; gcc's failure is one line naming the helper."""

import pytest

from harness import cbuild, tcp


@pytest.fixture
def helper(tmp_path, monkeypatch):
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { printf("%d\\n", FLOW_SAMPLE); return 0; }\n')
    monkeypatch.setattr(cbuild, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setitem(cbuild.HELPERS, "hello", (source, (), "the test helper"))
    return source


def test_a_binary_is_built_once_per_source_and_flags(helper, monkeypatch):
    import subprocess

    first = cbuild.binary("hello")
    assert subprocess.run([str(first)], capture_output=True, text=True).stdout == f"{tcp.FLOW_SAMPLE}\n"
    built_at = first.stat().st_mtime_ns
    assert cbuild.binary("hello") == first and first.stat().st_mtime_ns == built_at  # found, not rebuilt
    monkeypatch.setattr(tcp, "FLOW_SAMPLE", tcp.FLOW_SAMPLE * 2)  # a model number the C side gets
    doubled = cbuild.binary("hello")
    assert doubled != first
    assert subprocess.run([str(doubled)], capture_output=True, text=True).stdout == f"{tcp.FLOW_SAMPLE}\n"
    helper.write_text(helper.read_text() + "/* edited */\n")
    assert cbuild.binary("hello") not in (first, doubled)


def test_a_gcc_failure_is_one_line_naming_the_helper(helper):
    helper.write_text("int main(void) { return nope; }\n")
    with pytest.raises(cbuild.BuildError, match=r"cannot build the test helper \(gcc \): .*error.*nope"):
        cbuild.binary("hello")
    assert not list((cbuild.CACHE_DIR / "bin").glob("*"))  # no half-built binary left


def test_every_real_helper_builds_with_the_models_flags():
    for name in cbuild.HELPERS:
        assert cbuild.binary(name).name.startswith(f"{name}-")
