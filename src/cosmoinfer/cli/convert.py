"""``cosmoinfer-convert``: a CMD-layout folder -> one chunked HDF5 store (train with data.h5_path=...)."""

from __future__ import annotations

import argparse
import sys

from cosmoinfer.errors import InputError


class _Parser(argparse.ArgumentParser):
    """Usage errors (a missing argument) as one ``error:`` line and exit status 2, like the other CLIs."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv=None) -> int:
    ap = _Parser(prog="cosmoinfer-convert", description=__doc__.replace("``", ""))
    ap.add_argument("root", help="folder with Maps_{field}_{suite}_{set}_z=0.00.npy and params_{set}_{suite}.txt")
    ap.add_argument("out", help="HDF5 file to write (atomically)")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--fields", required=True, help="comma-separated, e.g. Mtot,Mgas")
    ap.add_argument("--set", default="LH")
    ap.add_argument("--manifest", default=None)
    args = ap.parse_args(argv)
    from cosmoinfer.data.hdf5 import convert_to_hdf5

    try:
        out = convert_to_hdf5(args.root, args.suite, args.fields.split(","), args.out, args.set, args.manifest)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
