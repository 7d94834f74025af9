import pytest

from harness.errors import UsageError
from harness.params import Param, parse_assignments, parse_setting, resolve, split_for_plugins, split_settings

COUNT = Param("connections", int, 10, "n", minimum=1)
MODE = Param("mode", str, "stream", "m", choices=("stream", "aggregate"))
FLAG = Param("offloads", bool, True, "o")


def test_assignments_split_on_commas_and_repeats():
    assert parse_assignments(["a=1,b=2", "c=x"]) == {"a": "1", "b": "2", "c": "x"}


@pytest.mark.parametrize("bad", ["a", "=1", "a=", "a=1,a=2"])
def test_malformed_assignments_are_refused(bad):
    with pytest.raises(UsageError):
        parse_assignments([bad])


def test_resolve_parses_types_and_keeps_defaults():
    assert resolve("churn", (COUNT, MODE, FLAG), {"connections": "25", "offloads": "off"}) == {
        "connections": 25,
        "mode": "stream",
        "offloads": False,
    }


@pytest.mark.parametrize(
    "given, message",
    [
        ({"connections": "-3"}, "must be >= 1"),
        ({"connections": "ten"}, "takes int"),
        ({"mode": "fast"}, "must be one of stream, aggregate"),
        ({"offloads": "maybe"}, "takes a boolean"),
        ({"bogus": "1"}, "has no parameter 'bogus'"),
    ],
)
def test_resolve_refuses_bad_values_with_the_reason(given, message):
    with pytest.raises(UsageError, match=message):
        resolve("churn", (COUNT, MODE, FLAG), given)


def test_plain_names_go_to_every_declaring_plugin_and_dotted_names_to_one():
    plugins = {"churn": (COUNT,), "tracepoint": (MODE,), "kprobe": (MODE,)}
    routed = split_for_plugins({"connections": "5", "mode": "aggregate", "kprobe.mode": "stream"}, plugins)
    assert routed == {
        "churn": {"connections": "5"},
        "tracepoint": {"mode": "aggregate"},
        "kprobe": {"mode": "stream"},
    }


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(UsageError, match="valid for this selection: connections"):
        split_for_plugins({"conections": "5"}, {"churn": (COUNT,), "none": ()})


def test_backend_settings_split_on_commas_outside_brackets_only():
    assert split_settings("kprobe, tracepoint[flavour=tp,mode=aggregate],pcap") == [
        "kprobe", "tracepoint[flavour=tp,mode=aggregate]", "pcap"]
    assert parse_setting("tracepoint[flavour=tp,mode=aggregate]") == ("tracepoint", {"flavour": "tp", "mode": "aggregate"})
    assert parse_setting("kprobe") == ("kprobe", {})


@pytest.mark.parametrize("bad", ["a[", "a]", "a[[b=1]]", "a,,b", "a[b=1]c"])
def test_malformed_backend_settings_are_refused(bad):
    with pytest.raises(UsageError):
        [parse_setting(item) for item in split_settings(bad)]
