"""``cosmoinfer-convert``: a CMD-layout folder -> one chunked HDF5 store (train with data.h5_path=...)."""

from __future__ import annotations

import argparse
import sys

from cosmoinfer.errors import InputError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
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
