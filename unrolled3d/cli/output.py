"""What a command prints: one JSON object with ``--json``, a line of text otherwise, nothing with
``--quiet``."""
from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["emit"]


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as JSON (``--json``) or ``text`` (unless ``--quiet``)."""
    if args.json:
        print(json.dumps(payload))
    elif not args.quiet:
        print(text)
