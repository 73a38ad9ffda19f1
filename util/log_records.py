"""log.txt: one JSON object per line, appended by main.py (one per epoch or evaluation).

The one reader (used by main.py's resume and by every tool) and the one writer.

Policy for damaged files:
* A half-written LAST line (the run was killed while appending) is skipped with a
  warning: the run that wrote it never finished that record, and main.py resumes
  from the checkpoint, not from the log, so nothing is lost by dropping it.
* Any other line that is not a JSON object is an error (LogRecordError, naming the
  file, the line number and the fix). main.py writes every line whole, so such a line
  means the file was edited or is not a main.py log; skipping it silently would drop
  an epoch's numbers (and could make a resumed run pick the wrong best AP).
* The writer first cuts off a half-written last line (or completes a whole record
  that only lacks its newline), so that a resumed run's first
  record starts on its own line instead of being glued to the fragment (which would
  turn it into a corrupt line in the middle, and lose the new record too).
"""
import json
import logging
import os
from typing import List

from util.disk import append_text
from util.logger import LOGGER_NAME


class LogRecordError(ValueError):
    """An unreadable log.txt (one-line message naming the file, the line and the fix)."""


def _parse(line: str):
    try:
        record = json.loads(line)
    except ValueError as err:
        return None, f"not JSON ({err.msg})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, ""


def read_log_records(path: str, missing_ok: bool = False) -> List[dict]:
    """The records of a main.py log.txt, in file order (blank lines ignored).

    A missing file is a LogRecordError, or [] with missing_ok (a run that has not
    logged yet). See the module docstring for half-written and corrupt lines.
    """
    if not os.path.isfile(path):
        if missing_ok:
            return []
        raise LogRecordError(f"{path}: no such file (pass the log.txt that main.py writes to --output_dir)")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        record, problem = _parse(line)
        if record is not None:
            records.append(record)
        elif i == len(lines) - 1:
            logging.getLogger(LOGGER_NAME).warning(
                "%s:%d: skipped a half-written last line (%s); the run was probably stopped while writing it",
                path, n, problem)
        else:
            raise LogRecordError(f"{path}:{n}: line is {problem}; main.py writes whole JSON lines, so this "
                                 f"file was edited or is not a main.py log.txt: fix or delete that line")
    return records


def append_log_record(path: str, record: dict) -> None:
    """Append `record` as one JSON line. A last line without its newline is completed if it
    is a whole record, else (half-written) cut off, so the new record starts its own line.
    A failed write (a full disk) cuts the file back and raises util.disk.DiskWriteError."""
    newline = ""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                start = data.rfind(b"\n") + 1  # 0 when the file is one line
                if _parse(data[start:].decode("utf-8", errors="replace"))[0] is not None:
                    newline = "\n"
                else:
                    f.truncate(start)
    append_text(path, newline + json.dumps(record) + "\n")


def training_epochs(records: List[dict]) -> List[dict]:
    """The training-epoch records (they carry 'epoch'); --eval / --test lines (marked 'mode') and
    the unmarked evaluation lines of older logs have no 'epoch' and are left out."""
    return [r for r in records if "epoch" in r and r.get("mode", "train") == "train"]
