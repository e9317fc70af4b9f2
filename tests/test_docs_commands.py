"""The docs cannot drift from the command line: every `dinokit …` command line in README.md and docs/*.md is
parsed by the real parser (`dinokit.cli.build_parser` with the rule `main` adds for `train` overrides).

Found: the lines of shell code blocks (backslash continuations joined, comments and a `$ ` prompt removed) and
the inline code spans of the prose; as `dinokit …`, `python -m dinokit …` or `torchrun … -m dinokit.cli …`.
A synopsis stands for the command lines it allows: `[optional]` parts are included, each alternative of
`a|b|c` is checked, `…` after an option is its value (elsewhere: "more of these", dropped) and a `<verb>`
placeholder ends the line. Words such as FILE or DIR are fine as values. A command in a code block must be
complete; a span in a sentence may leave out required arguments, but whatever it names must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from dinokit.cli import build_parser, parse_args
from dinokit.config.recipes import find_recipe

ROOT = Path(__file__).parents[1]
SHELL = {"", "bash", "sh", "shell", "console"}  # code blocks whose lines are commands (not python, json …)
OPERATORS = {"|", "||", "&&", ";"}
ELLIPSIS = {"...", "…"}


def command_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, shell text, whether it is in a code block) of each candidate command line."""
    lines = text.splitlines()
    fence = None  # the info string of the open code block; None outside blocks
    prose: list[tuple[int, str]] = []  # a run of prose lines, scanned at once: a code span may wrap
    pending, start = "", 0
    for number, line in enumerate([*lines, "```"], 1):  # the extra fence flushes trailing prose
        if line.lstrip().startswith("```"):
            if fence is None:
                yield from _spans(prose)
                prose = []
            fence = line.strip()[3:].strip() if fence is None else None
        elif fence is None:
            prose.append((number, line))
        elif fence in SHELL:
            start = start or number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield start, pending + line, True
            pending, start = "", 0


def _spans(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str, bool]]:
    text = "\n".join(line for _, line in prose)
    for m in re.finditer(r"`([^`]+)`", text):
        yield prose[text.count("\n", 0, m.start())][0], m.group(1).replace("\n", " "), False


def dinokit_argvs(shell: str) -> list[list[str]]:
    """The argument lists given to dinokit on one shell line."""
    try:
        words = shlex.split(shell, comments=True)
    except ValueError:  # an unbalanced quote: prose such as dinokit's, not a command
        return []
    found = []
    for _, segment in itertools.groupby(words, lambda w: w in OPERATORS):
        segment = list(segment)
        while segment and (segment[0] == "$" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", segment[0])):
            segment = segment[1:]  # a prompt, environment variables
        if segment and Path(segment[0]).name == "dinokit":
            found.append(segment[1:])
        elif "-m" in segment[:-1] and segment[segment.index("-m") + 1] in ("dinokit", "dinokit.cli"):
            found.append(segment[segment.index("-m") + 2 :])
    return [argv for argv in found if argv]


def concrete(argv: list[str]) -> list[list[str]]:
    """The command lines a synopsis stands for (see the module's docstring)."""
    words: list[str] = []
    for word in argv:
        word = word.strip("[]")
        if re.fullmatch(r"<[^>]+>", word):
            break
        if word and (word not in ELLIPSIS or (words and words[-1].startswith("-"))):
            words.append(word)
    return [list(v) for v in itertools.product(*(w.split("|") if w not in OPERATORS else [w] for w in words))]


def _prepare(parser: argparse.ArgumentParser, complete: bool) -> None:
    """Let placeholders (a capitalised word such as N or FILE, or an ellipsis) stand for any value of an option
    and, unless the command must be complete, make every argument and sub-command optional; in this parser and
    the parsers below it."""
    for action in parser._actions:
        action.required = action.required and complete
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _prepare(sub, complete)
        else:
            action.type = _placeholder_or(action.type or str, next(iter(action.choices or ()), None))


def _placeholder_or(convert, choice):
    def value(text: str):
        if text.isupper() or text in ELLIPSIS:
            return text if choice is None else choice  # a valid choice, so that argparse's check passes
        return convert(text)

    return functools.wraps(convert)(value)  # argparse's messages name the type: "invalid int value"


def problem(argv: list[str], complete: bool) -> str | None:
    """Why the command line does not parse (argparse's message), or None."""
    parser = build_parser()
    _prepare(parser, complete)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parse_args(parser, argv)
    except SystemExit as e:  # a usage error (status 2), or --help / --version (status 0)
        return err.getvalue().strip().splitlines()[-1] if e.code else None
    config = getattr(args, "config", None)
    if args.command == "train" and config and not config.isupper():  # a recipe, unless a placeholder (RECIPE)
        try:
            find_recipe(config)
        except ValueError as e:
            return str(e).split(";")[0]
    return None


def documented_commands() -> list[tuple[str, list[str], bool]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, shell, in_block in command_lines(path.read_text()):
            for argv in dinokit_argvs(shell):
                found.append((f"{path.relative_to(ROOT)}:{number}", argv, in_block))
    return found


def test_every_documented_command_parses():
    commands = documented_commands()
    # the docs have about a hundred: a much smaller count means the extraction stopped finding them
    assert len(commands) > 50, len(commands)
    failures = [f"{where}: dinokit {shlex.join(line)}\n    {why}"
                for where, argv, in_block in commands for line in concrete(argv)
                if (why := problem(line, complete=in_block))]  # fmt: skip
    listing = "\n".join(failures)
    assert not failures, f"{len(failures)} of {len(commands)} documented commands do not parse:\n{listing}"


def test_extraction():
    text = "\n".join([
        "Run `dinokit info FILE` or `python -m dinokit\ndemo --seed 1`; not `dinokit.load_backbone()`, `dinokit's`.",
        "```bash",
        "$ dinokit extract a/ --backbone b.pth \\",
        "    --output o/   # resumable",
        "HF_HUB_OFFLINE=1 torchrun --nproc_per_node=8 -m dinokit.cli train tiny_cpu a=1 && dinokit --version",
        "```",
        "```python",
        "dinokit train would not be run here",
        "```",
    ])  # fmt: skip
    found = [(n, argv, block) for n, shell, block in command_lines(text) for argv in dinokit_argvs(shell)]
    assert found == [
        (1, ["info", "FILE"], False),
        (1, ["demo", "--seed", "1"], False),
        (4, ["extract", "a/", "--backbone", "b.pth", "--output", "o/"], True),
        (6, ["train", "tiny_cpu", "a=1"], True),
        (6, ["--version"], True),
    ]
    assert concrete(["convert", "S", "D", "--format", "dinokit|hf", "[--x", "…]", "..."]) == [
        ["convert", "S", "D", "--format", "dinokit", "--x", "…"],
        ["convert", "S", "D", "--format", "hf", "--x", "…"],
    ]
    assert concrete(["eval", "<protocol>", "--backbone", "B"]) == [["eval"]]


@pytest.mark.parametrize(
    "argv, complete, message",
    [
        (["extract", "a/", "--backbone", "b", "--output", "o", "--tiles", "9"], False, "unrecognized arguments"),
        (["extract", "a/", "--backbone", "b"], True, "required: --output"),
        (["eval", "knm"], False, "invalid choice"),
        (["viz", "pca", "x.png", "--size", "big"], False, "expected an integer, got 'big'"),
        (["viz", "KIND", "x.png", "--size", "N", "--backbone", "…", "--output", "FILE"], True, None),  # placeholders
        (["convert", "S", "D", "--format", "dinokit_", "--format", "FORMAT"], False, "invalid choice: 'dinokit_'"),
        (["train", "no_such_recipe"], False, "neither a YAML file nor a shipped recipe"),
        (["train", "tiny_cpu", "--print-config", "a=1"], True, None),  # `main`'s rule for overrides
        (["eval", "knn"], False, None),  # a mention in a sentence may leave required arguments out
    ],
)
def test_the_check_sees_mistakes(argv, complete, message):
    why = problem(argv, complete)
    assert why is None if message is None else message in why
