"""One way for every entry point to turn a user error into one line and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable

from trainables.errors import RankhouseError


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> None:
    """Run ``main``; a RankhouseError becomes ``rankhouse: error: …`` on stderr and exit 2."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except RankhouseError as exc:
        print(f"rankhouse: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("rankhouse: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
