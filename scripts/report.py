"""Write the offline HTML report of a run or sweep folder.

    python scripts/report.py outputs/multiruns/2026-11-24/17-53-07          # -> .../17-53-07/report.html
    python scripts/report.py outputs/runs/2026-11-24/17-53-07_vae_mnist --out /tmp/report

The page: final metrics per configuration (mean ± std over seeds), metric-versus-epoch plots, the last sample
grid of each run, each run's config and extractor, and every failed, crashed or half-written run with its error.
A folder with no runs, or an out folder that cannot be written to, is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlab.report import NoRunsError, OutFolderError, write_report


def main(argv: list[str] | None = None) -> int:
    """Write the report of the folder named in `argv`; prints the page's path, returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep (multirun) folder")
    parser.add_argument("--out", type=Path, default=None, help="where report.html goes (default: the folder)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.folder, args.out)
    except NoRunsError as err:
        return fail(str(err))
    except OutFolderError as err:
        return fail(f"--out {err}" if args.out is not None else f"{err}; write it elsewhere with --out DIR")
    print(path)
    return 0


def fail(message: str) -> int:
    print(f"report.py: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
