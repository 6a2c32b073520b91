"""Command line: `python -m helpers run ...` (the whole job, headless), `summary` and `compare` (training runs)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m helpers`."""
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the numbered notebooks headless, in order and print a summary")
    run.add_argument("--preset", default=None, choices=["smoke", "cpu", "gpu"],
                     help="default: $IMSUB_PRESET, else gpu with CUDA and cpu without")
    run.add_argument("--data-root", default=None, help="dataset in the challenge layout (default: found, else demo)")
    run.add_argument("--out", default=None, help="folder for runs/, cache/, submission/ (default: the repository)")
    run.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 04,05")
    run.add_argument("--again", action="store_true",
                     help="execute every notebook, also those a stopped run finished (by default it continues "
                          "at the notebook it stopped in)")
    run.add_argument("--side-runs", action="store_true",
                     help="also the comparisons no later step uses (01's classifier without augmentation), "
                          "as in JupyterLab; same as IMSUB_SIDE_RUNS=1")
    summary = sub.add_parser("summary", help="print the summary of a finished run")
    summary.add_argument("--run-dir", default=None, help="default: runs/<dataset>/<preset> of the current config")
    summary.add_argument("--preset", default=None, choices=["smoke", "cpu", "gpu"], help="as for run")
    summary.add_argument("--out", default=None, help="the --out folder the run was given")
    compare = sub.add_parser("compare", help="one line per training run (epochs, best score, time) of run folders")
    compare.add_argument("run_dirs", nargs="*", help="run folders (default: every folder under runs/)")
    args = parser.parse_args(argv)

    from . import runner

    if args.command == "run":
        import torch

        preset = args.preset or os.environ.get("IMSUB_PRESET") or (
            "gpu" if torch.cuda.is_available() else "cpu")
        from .fileops import FolderInUseError

        try:
            result = runner.run(preset, args.data_root, args.out, args.only.split(",") if args.only else None,
                                again=args.again, side_runs=args.side_runs)
        except FolderInUseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        print(runner.format_summary(result))
        return 0
    if args.command == "summary":
        from .config import get_config

        folders = {"runs_dir": Path(args.out).expanduser() / "runs"} if args.out else {}
        runner.print_summary(args.run_dir or get_config(args.preset, prepare_data=False, **folders).run_dir)
        return 0
    if args.command == "compare":
        from .config import project_root
        from .tracking import compare_runs

        folders = args.run_dirs or sorted({p.parent for p in (project_root() / "runs").rglob("*.history.csv")})
        print(compare_runs(folders) if folders else "no training runs under runs/ yet")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
