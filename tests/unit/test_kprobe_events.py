"""The kprobe backend's tracefs kprobes, against a stand-in tracefs folder: commands are appended
(never a truncating open, which would remove every kprobe event on the system), the group's events
are found among others', and kprobe_profile's hits and nmissed are read per event."""

from harness import system
from harness.system import KPROBE_GROUP, add_kprobe_event, kprobe_events_ours, kprobe_profile, remove_kprobe_event


def _tracefs(tmp_path, events: str = "", profile: str = ""):
    (tmp_path / "kprobe_events").write_text(events)
    (tmp_path / "kprobe_profile").write_text(profile)
    return tmp_path


def test_commands_are_appended_to_kprobe_events(tmp_path):
    tracefs = _tracefs(tmp_path, "p:kprobes/someone_else do_sys_open\n")
    add_kprobe_event(tracefs, "tpb_42_state", "tcp_set_state")
    remove_kprobe_event(tracefs, "tpb_42_state")
    assert (tracefs / "kprobe_events").read_text().splitlines() == [
        "p:kprobes/someone_else do_sys_open", f"p:{KPROBE_GROUP}/tpb_42_state tcp_set_state",
        f"-:{KPROBE_GROUP}/tpb_42_state"]


def test_only_the_groups_events_are_ours(tmp_path):
    tracefs = _tracefs(tmp_path, "p:kprobes/p_tcp_set_state_bcc_7 tcp_set_state\n"
                                 f"p:{KPROBE_GROUP}/tpb_42_state tcp_set_state\n"
                                 f"r:{KPROBE_GROUP}/tpb_42_destroy tcp_v4_destroy_sock\n\n")
    assert kprobe_events_ours(tracefs) == ["tpb_42_state", "tpb_42_destroy"]
    assert kprobe_events_ours(tmp_path / "absent") == []


def test_kprobe_profile_gives_hits_and_misses_per_event(tmp_path):
    tracefs = _tracefs(tmp_path, profile="  tpb_42_state                                   2002               2\n"
                                         "  p_tcp_reset_bcc_7                                 0               0\n")
    assert kprobe_profile(tracefs) == {"tpb_42_state": (2002, 2), "p_tcp_reset_bcc_7": (0, 0)}


def test_stale_events_are_removed_by_cleanup(tmp_path, monkeypatch):
    tracefs = _tracefs(tmp_path, f"p:{KPROBE_GROUP}/tpb_42_state tcp_set_state\n")
    monkeypatch.setattr(system, "tracefs_path", lambda: tracefs)
    assert system.remove_stale_kprobe_events() == [f"removed kprobe event {KPROBE_GROUP}/tpb_42_state"]
    assert (tracefs / "kprobe_events").read_text().splitlines()[-1] == f"-:{KPROBE_GROUP}/tpb_42_state"
