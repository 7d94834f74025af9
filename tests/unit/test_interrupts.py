"""SIGTERM/SIGINT become Interrupted where unwinding is safe, and are never lost."""

import os
import signal
import sys

import pytest

from harness import interrupts
from harness.errors import Interrupted


@pytest.fixture(autouse=True)
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    interrupts.reset()
    interrupts.install()
    yield
    interrupts.reset()
    sys.unraisablehook = hook
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _term():
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns to Python code


def test_outside_a_critical_section_it_is_raised_at_once():
    with pytest.raises(Interrupted, match="SIGTERM"):
        _term()
        pytest.fail("not raised at once")


def test_inside_a_critical_section_it_waits_for_the_end():
    done = []
    with pytest.raises(Interrupted):
        with interrupts.critical():
            _term()
            done.append("rest of the section")
    assert done == ["rest of the section"]


def test_nested_sections_raise_at_the_outermost_end():
    done = []
    with pytest.raises(Interrupted):
        with interrupts.critical():
            with interrupts.critical():
                _term()
            done.append("outer section's rest")
    assert done == ["outer section's rest"]


def test_a_dropped_interrupt_is_silent_and_raised_again_by_the_next_check_and_section(capfd):
    class Finalized:
        def __del__(self):
            _term()  # Python drops the Interrupted raised here ("Exception ignored in ...")

    Finalized()
    assert interrupts.pending() == "SIGTERM"
    assert "Traceback" not in capfd.readouterr().err  # no traceback on the user's terminal for it
    with pytest.raises(Interrupted):
        interrupts.check()
    with pytest.raises(Interrupted):
        with interrupts.critical():
            pass


def test_other_unraisable_exceptions_are_still_reported(monkeypatch):
    class Broken:
        def __del__(self):
            raise KeyError("a real bug")

    seen = []
    monkeypatch.setattr(interrupts, "_default_unraisable", seen.append)  # what install() found before it
    Broken()
    assert [type(u.exc_value) for u in seen] == [KeyError]


def test_cleanup_while_an_interrupt_unwinds_is_not_cut_short():
    cleaned = []
    with pytest.raises(Interrupted):
        try:
            _term()
        finally:
            for step in ("detach", "teardown"):  # each in its own section, one after the other
                with interrupts.critical():
                    cleaned.append(step)
    assert cleaned == ["detach", "teardown"]


def test_without_a_signal_nothing_is_raised():
    interrupts.check()
    with interrupts.critical():
        pass
    assert interrupts.pending() is None
