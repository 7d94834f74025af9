"""The wheel carries every C source the harness compiles at run time, so a non-editable install works; the
runtime needs no test-only dependency (scapy)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_every_c_source_under_harness(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    tree = tmp_path / "tree"
    for name in filter(None, tracked.stdout.split("\0")):  # a copy of the tracked tree: the build leaves nothing here
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), "."],
                           cwd=tree, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("tpbench-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(tree).as_posix() for p in (tree / "harness").rglob("*") if p.suffix in (".c", ".h")}
    assert {"harness/agents/traffic/c/churn.c", "harness/backends/ringbuf_consumer.c"} <= sources
    assert sources - inside == set()
    modules = {p.relative_to(tree).as_posix() for d in ("harness", "netns") for p in (tree / d).rglob("*.py")}
    assert modules - inside == set()  # every package is listed in pyproject.toml's [tool.setuptools] packages


def test_scapy_is_for_the_tests_only():
    """scapy is the tests' independent decoder, a [test] extra: nothing tpbench runs may import it."""
    import ast
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("scapy") for d in project["dependencies"])
    assert any(d.startswith("scapy") for d in project["optional-dependencies"]["test"])
    importing = []
    for source in sorted(p for d in ("harness", "netns") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name == "scapy" or name.startswith("scapy.") for name in names):
                importing.append(f"{source.relative_to(REPO)}:{node.lineno}")
    assert importing == []
