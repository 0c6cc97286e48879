"""Shared pieces of the Hydra entry points: config location and the bad-input guard."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable

from cosmoinfer.errors import InputError

#: Absolute path of the repository's ``conf/`` folder (Hydra ``config_path``).
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")

log = logging.getLogger("cosmoinfer")


def guard_input_errors(fn: Callable) -> Callable:
    """Turn an :class:`InputError` into one line on stderr and exit status 2.

    Everything else (bugs) keeps its traceback. Wrap the Hydra task function with it, inside
    ``@hydra.main`` so Hydra never prints a traceback for bad input.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
