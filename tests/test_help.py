"""Every command of `perception` says what it does, and every argument what it is: `--help` is the
documentation a user reaches first."""

import argparse

import pytest

from perception import cli


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser: the built-in subcommands, and each delegated command's own (caught as
    its main calls parse_args, before it does anything)."""
    found = {}
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found.update({name: p for name, p in subparsers.choices.items() if name not in cli.DELEGATED})

    def capture(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        raise Captured(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        for name in cli.DELEGATED:
            try:
                cli._run_delegated(name, [])
            except Captured as caught:
                found[name] = caught.parser
            except ImportError as exc:  # an extra this environment lacks (TensorRT)
                pytest.skip(f"{name}: {exc}")
    return found


def test_every_command_has_a_description_and_every_argument_help_text():
    missing = []
    for name, parser in sorted(parsers().items()):
        if not (parser.description or "").strip():
            missing.append(f"perception {name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"perception {name} {'/'.join(action.option_strings) or action.dest}: no help text")
    assert not missing, "\n".join(missing)


def test_every_delegated_command_is_found():
    assert set(cli.DELEGATED) <= set(parsers())
