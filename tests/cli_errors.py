"""How the tests check a user error of main.py or a tool: exit status 2 after one stderr line
`<prog>: error: <message>` (util/cli.py)."""
import contextlib
import re

import pytest


@contextlib.contextmanager
def user_error(capsys, match: str = None):
    """The block must exit with status 2 after printing one `...: error: ...` line that matches `match`
    (re.search); the line is in the yielded dict under 'line' after the block."""
    found = {}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        yield found
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, (exc.value.code, lines)
    assert len(lines) == 1 and ": error: " in lines[0], lines
    assert match is None or re.search(match, lines[0]), lines[0]
    found["line"] = lines[0]
