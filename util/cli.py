"""Command-line conventions of main.py and every tool: a user error is one line and exit status 2.

* `ArgumentParser`: argparse's parser whose errors are one line, `<prog>: error: <message>` (no usage
  block; --help shows it), and whose unknown flags get the closest known ones, with '-' and '_' taken as
  the same letter (`--use-hae` -> `did you mean --use_hae?`).
* `fail(prog, message)`: print that line and exit with USER_ERROR; `run_guarded` does it for the given
  exception types and turns Ctrl-C into one line too (exit INTERRUPTED, as a shell reports SIGINT).
* `one_line(err)`: the user-facing line of an exception (a DataLoader worker's error carries the worker's
  whole traceback in its message; its last line is the original message).
"""
import argparse
import difflib
import re
import sys
from typing import Callable, Iterable, List, NoReturn, Tuple, TypeVar

USER_ERROR = 2  # argparse's status for bad command lines; main.py and the tools use it for every user error
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C

T = TypeVar("T")


def one_line(err: BaseException) -> str:
    """The user-facing line of `err` (see the module docstring)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return " ".join(text.split()) or type(err).__name__


def fail(prog: str, message: str) -> NoReturn:
    """Print `<prog>: error: <message>` (one line) to stderr and exit with USER_ERROR."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(USER_ERROR)


def run_guarded(prog: str, step: Callable[[], T], errors: Tuple[type, ...]) -> T:
    """step(); an exception of `errors` becomes fail(prog, its line), Ctrl-C one line and INTERRUPTED."""
    try:
        return step()
    except errors as err:
        fail(prog, one_line(err))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C); nothing else was written", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def _flag_key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_").lower()


def closest_flags(flag: str, known: Iterable[str], n: int = 3) -> List[str]:
    """Known option strings closest to `flag`: the same name with '-' for '_' (or another case) first, then
    difflib's close matches of the names."""
    by_key = {}
    for option in known:
        if option.startswith("--") or len(option) > 2:
            by_key.setdefault(_flag_key(option), option)
    key = _flag_key(flag.split("=", 1)[0])
    if key in by_key:
        return [by_key[key]]
    return [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.6)]


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with one-line errors and did-you-mean for unknown flags (module docstring)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{self._with_suggestions(message)} (see {self.prog} --help)")

    def _with_suggestions(self, message: str) -> str:
        found = re.match(r"unrecognized arguments: (.*)", message)
        if not found:
            return message
        known = [s for action in self._actions for s in action.option_strings]
        parts = []
        for token in found.group(1).split():
            close = closest_flags(token, known) if token.startswith("-") else []
            parts.append(f"{token} (did you mean {' or '.join(close)}?)" if close else token)
        return f"unrecognized argument{'s' if len(parts) > 1 else ''}: {', '.join(parts)}"

