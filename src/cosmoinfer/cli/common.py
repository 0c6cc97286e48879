"""Shared pieces of the Hydra entry points: config location and the bad-input guard."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Callable

from cosmoinfer.errors import InputError

#: Absolute path of the repository's ``conf/`` folder (Hydra ``config_path``).
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")

log = logging.getLogger("cosmoinfer")


#: What to set for a mandatory setting (``???`` in ``conf/``) left missing, by key.
MISSING_HINTS = {
    "checkpoints": "set checkpoints=path/to/best.ckpt (or a list [a.ckpt,b.ckpt], a training folder or a glob)",
    "predictions": "set predictions=path/to/predictions.h5 (or a list [a.h5,b.h5])",
    "data.root": "set data.root=path/to/a CMD-layout folder (or data.h5_path=path/to/store.h5)",
}
#: A missing key that another given setting replaces (``data.h5_path`` instead of ``data.root``).
MISSING_ALTERNATIVES = {"data.root": ("data.h5_path",)}


def missing_message(key: str, more: list[str] | tuple = ()) -> str:
    """``"<key>: missing; set <key>=..."`` (one line), naming further missing keys."""
    hint = MISSING_HINTS.get(key, f"set {key}=<value> on the command line")
    also = f" (also missing: {', '.join(more)})" if more else ""
    return f"{key}: missing; {hint}{also}"


def missing_settings(cfg) -> list[str]:
    """The mandatory settings (``???``) that ``cfg`` leaves missing, sorted by key.

    Walks the config without resolving interpolations (``${hydra:...}`` needs a running app).
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found: list[str] = []

    def walk(node, prefix: str) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            full = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
            if OmegaConf.is_missing(node, key):
                found.append(full)
                continue
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_interpolation():
                walk(child, f"{full}.")

    if not isinstance(cfg, DictConfig) or cfg._is_none() or cfg._is_missing():
        return []
    walk(cfg, "")
    out = []
    for key in sorted(found):
        alternatives = MISSING_ALTERNATIVES.get(key, ())
        if any(OmegaConf.select(cfg, a, default=None, throw_on_missing=False) not in (None, "", "???")
               for a in alternatives):
            continue
        out.append(key)
    return out


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def guard_input_errors(fn: Callable) -> Callable:
    """Turn bad input into one line on stderr and exit status 2.

    Bad input is an :class:`InputError`, or a mandatory setting (``???`` in ``conf/``) left
    missing: that is checked before ``fn`` runs (the line names the key and what to set) and
    caught again should ``fn`` meet one (an interpolation to a missing key). Everything else (bugs)
    keeps its traceback. Wrap the Hydra task function with it, inside ``@hydra.main`` so Hydra
    never prints a traceback for bad input; its first argument is the composed config.
    """
    from omegaconf.errors import MissingMandatoryValue

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        missing = missing_settings(args[0]) if args else []
        if missing:
            _fail(missing_message(missing[0], missing[1:]))
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            _fail(str(err))
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", None) or "a setting"
            _fail(missing_message(str(key)))
        except OSError as err:
            line = output_failure(err)
            if line is None:
                raise
            _fail(line)

    return wrapper


#: errno values of a failed write the user can act on (the disk, quota, permissions), not bugs.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def output_failure(err: OSError) -> str | None:
    """One line for an output failure (full disk, quota, read-only, permissions), else ``None``.

    Writes are atomic (temporary file, then rename), so such a failure leaves no partial output.
    h5py reports a full disk as an ``OSError`` without errno, naming it in its message.
    """
    text = str(err)
    if err.errno not in OUTPUT_ERRNOS and "No space left on device" not in text:
        return None
    where = err.filename or "output"
    what = err.strerror or text.split("(")[0].strip() or "write failed"
    return f"{where}: {what}; nothing was written (free space or choose another out_dir)"
