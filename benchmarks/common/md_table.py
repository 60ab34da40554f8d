"""The markdown tables the diagnosis scripts print and, with ``--out``, write (atomically)."""

import shlex
import sys

from d2d_ext.files import write_bytes_atomic


def command_line() -> str:
    """How this script was run, shell-quoted (for the line above a table)."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def emit(title: str, header: list, rows: list, out=None) -> str:
    """Print ``title``, a blank line and the table (``header``: cells; ``rows``: lists of cells,
    formatted already); also write it to ``out`` when given. Returns the text."""
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_bytes_atomic(out, text.encode())
    return text
