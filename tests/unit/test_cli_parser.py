"""The command line's layout: one module per subcommand, each giving its parser a handler."""

import argparse

from harness.cli import COMMANDS, build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_has_a_handler_in_its_own_module():
    subcommands = _subcommands(build_parser())
    assert list(subcommands) == ["run", "toggle", "bench", "report", "kernel", "cleanup", "vm", "compare", "list"]
    assert len(COMMANDS) == len(subcommands)
    for (name, sub), module in zip(subcommands.items(), COMMANDS):
        handler = sub.get_default("handler")
        assert callable(handler), name
        assert handler.__module__ == module.__name__, name


def test_parsing_sets_the_handler_and_the_defaults():
    args = build_parser().parse_args(["toggle", "-b", "tracepoint,pcap"])
    assert args.handler.__name__ == "cmd_toggle"
    assert (args.backend, args.workload, args.window, args.estimator) == (["tracepoint", "pcap"], ["churn"], 1.0, "mean")
