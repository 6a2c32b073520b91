"""The whole job and the plain tutorial pipeline on real photos, over seeds, scored on their hidden truth.

    python benchmarks/real_photos.py --set tiny10 --seeds 0 1 2 --out /tmp/real
    python benchmarks/real_photos.py --set nette10 --jobs 2 --variant main --variant ssl:INIT=ssl --out /tmp/real
    python benchmarks/real_photos.py --set tiny10 --out /tmp/real --report      # the table of finished runs

The sets are those of ../shared/realdata/ (the project's sibling folder; --realdata or
$IMSUB_REALDATA point elsewhere): real photos in the challenge layout, NAME/ImageNet-Subset/, with
their truth beside them, NAME/truth/. Each variant (NAME[:FIELD=VALUE,...], IMSUB_ overrides;
default "main", today's defaults) runs `python -m helpers run --preset P` on the set with
IMSUB_TRUTH_ROOT pointing at the truth, so that notebook 05 and the run summary score the
submission; `benchmarks/plain_pipeline.py` runs beside it with the same preset's image size and
epochs and the same seeds. Wall time is measured around each run. With --jobs N, N runs go at once,
each with cores / N threads (say so when you quote times: they share the machine). Finished runs
are not run again (their results are read back); the table at the end gives per-seed and mean test
accuracy and mIoU (n/a where the truth has no masks), minutes per run, and each variant's
difference to the plain pipeline. --reuse NAME starts each run of a variant from a copy of variant
NAME's finished run folders at the same seed (runs/ and cache/): every training whose settings are
unchanged is taken back from its checkpoint instead of trained again, so a variant that changes only
the U-Net (IMSUB_SEG_*, IMSUB_MASK_METHOD) retrains 04 and 05 alone; its minutes then count only
that. A run killed on the way (a session's end) resumes from its checkpoints when the same command
runs again, its minutes adding up over the tries. Without the photos it says so and exits 0: a user's clone has no
../shared. Never commit the photos or anything made from them (the outputs go to --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from seed_study import parse_variant  # noqa: E402

PLAIN = "plain"


def realdata_root(given: str | None = None) -> Path:
    """Where the real photo sets are: --realdata, else $IMSUB_REALDATA, else ../shared/realdata beside the repo."""
    return Path(given or os.environ.get("IMSUB_REALDATA") or ROOT.parent / "shared" / "realdata").expanduser()


def run_one(set_dir: Path, name: str, env: dict[str, str], seed: int, args) -> dict:
    """Run one variant (or the plain pipeline) at one seed unless done; its scores and wall time."""
    out = Path(args.out) / set_dir.name / name / f"s{seed}"
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    reused = _start_from(Path(args.out) / set_dir.name, name, seed, out, getattr(args, "reuse", None))
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    data_root = set_dir / "ImageNet-Subset"
    environment = {**os.environ, **env, "IMSUB_SEED": str(seed), "IMSUB_TRUTH_ROOT": str(set_dir / "truth"),
                   "IMSUB_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                   "PYTHONPATH": str(ROOT), "IMSUB_ROOT": str(ROOT)}
    if name == PLAIN:
        command = [sys.executable, str(ROOT / "benchmarks" / "plain_pipeline.py"), "--preset", args.preset,
                   "--seed", str(seed), "--data-root", str(data_root), "--out", str(out), "--threads", str(threads)]
    else:
        command = [sys.executable, "-m", "helpers", "run", "--preset", args.preset, "--data-root", str(data_root),
                   "--out", str(out)]
    log = out.with_suffix(".log")
    returncode, seconds = run_timed(command, environment, log, out / "elapsed_seconds.txt")
    if returncode:
        raise SystemExit(f"{set_dir.name} / {name} seed {seed} failed; see {log}")
    if name == PLAIN:
        scores = json.loads((out / "plain.json").read_text())
    else:
        scores = json.loads(next((out / "runs").glob(f"*/{args.preset}*/summary.json")).read_text())
    result = {"seed": seed, "threads": threads, "seconds": round(seconds, 1),
              "test_accuracy": scores.get("test_accuracy"), "test_miou": scores.get("test_miou"),
              "summary": {k: v for k, v in scores.items() if not isinstance(v, (dict, list))}}
    if reused:
        result["reused"] = reused
    result_file.write_text(json.dumps(result, indent=2))
    return result


def run_timed(command: list[str], environment: dict, log: Path, elapsed_file: Path,
              every: float = 30.0) -> tuple[int, float]:
    """Run `command` (output appended to `log`); its exit code and wall seconds, earlier interrupted tries included.

    The seconds so far are kept in `elapsed_file` every `every` s, so that a run killed with its
    session (and resumed from its checkpoints by the same command later) still reports its whole time.
    """
    before = float(elapsed_file.read_text()) if elapsed_file.is_file() else 0.0
    start = time.perf_counter()

    def keep(seconds: float) -> None:
        part = elapsed_file.with_suffix(".tmp")
        part.write_text(f"{seconds:.1f}")
        part.replace(elapsed_file)

    with open(log, "a") as f:
        process = subprocess.Popen(command, env=environment, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            try:
                returncode = process.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                keep(before + time.perf_counter() - start)
    seconds = before + time.perf_counter() - start
    keep(seconds)
    return returncode, seconds


def _start_from(set_out: Path, name: str, seed: int, out: Path, reuse: str | None) -> str | None:
    """With --reuse: copy that variant's finished run folders (cache/, runs/) at this seed into `out`.

    The name it came from is kept in out/reused_from.txt, so that a resumed run still says so."""
    marker = out / "reused_from.txt"
    if marker.is_file() and (out / "runs").exists():
        return marker.read_text().strip()
    if not reuse or name in (PLAIN, reuse) or (out / "runs").exists():
        return None
    source = set_out / reuse / f"s{seed}"
    if not (source / "result.json").is_file():
        raise SystemExit(f"--reuse {reuse}: {source} holds no finished run (no result.json); run variant "
                         f"{reuse!r} at seed {seed} first, or leave out --reuse")
    out.mkdir(parents=True, exist_ok=True)
    folders = [f for f in ("cache", "runs") if (source / f).is_dir()]  # runs/ last: it marks a finished copy
    for folder in folders:
        shutil.rmtree(out / f".{folder}.copy", ignore_errors=True)
        shutil.copytree(source / folder, out / f".{folder}.copy")  # copies, not links: history CSVs grow in place
    marker.write_text(reuse)
    for folder in folders:
        (out / f".{folder}.copy").rename(out / folder)
    return reuse


def _mean(values: list) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers and len(numbers) == len(values) else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(set_name: str, found: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown: per variant, per-seed and mean accuracy and mIoU, minutes per run, and the difference to plain."""
    plain = found.get(PLAIN, {})

    def versus(by_seed: dict, key: str) -> str:
        """The mean difference to plain over the seeds both have (a missing seed never skews it)."""
        common = [s for s in seeds if s in by_seed and s in plain]
        diff = _mean([by_seed[s][key] - plain[s][key] if None not in (by_seed[s][key], plain[s][key]) else None
                      for s in common]) if common else None
        return "" if diff is None else f"{diff:+.3f}" + (f" (on {len(common)} of {len(seeds)} seeds)" if len(common) < len(seeds) else "")

    lines = [f"{set_name}: test accuracy and mIoU (n/a: the truth has no masks), seeds {' '.join(map(str, seeds))}; "
             "'vs plain': the mean per-seed difference", "",
             "| pipeline | accuracy per seed | mean | vs plain | mIoU per seed | mean | vs plain | minutes per run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_seed in found.items():
        rows = [by_seed[s] for s in seeds if s in by_seed]
        acc, miou = [r["test_accuracy"] for r in rows], [r["test_miou"] for r in rows]
        mean_acc, mean_miou = _mean(acc), _mean(miou)
        d_acc = versus(by_seed, "test_accuracy") if name != PLAIN else ""
        d_miou = versus(by_seed, "test_miou") if name != PLAIN else ""
        minutes = " / ".join(f"{r['seconds'] / 60:.1f}" for r in rows)
        threads = sorted({r["threads"] for r in rows})
        reused = sorted({r["reused"] for r in rows if r.get("reused")})
        note = f", reusing {'/'.join(reused)}'s runs" if reused else ""
        lines.append(f"| {name} | {' / '.join(map(_fmt, acc))} | **{_fmt(mean_acc)}** | {d_acc} | "
                     f"{' / '.join(map(_fmt, miou))} | **{_fmt(mean_miou)}** | {d_miou} | {minutes} "
                     f"({'/'.join(map(str, threads))} thr.{note}) |")
    return "\n".join(lines)


def collect(out: Path, set_name: str, names: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """The finished runs' results: {name: {seed: result}}."""
    found: dict[str, dict[int, dict]] = {}
    for name in names:
        for seed in seeds:
            path = out / set_name / name / f"s{seed}" / "result.json"
            if path.is_file():
                found.setdefault(name, {})[seed] = json.loads(path.read_text())
    return found


def main(argv=None) -> int:
    """Run what is missing, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", required=True, help="a folder of the real photo sets: tiny10, tiny50, nette10, ...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", help="NAME[:FIELD=VALUE,...]; default: main")
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain pipeline")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores / jobs threads)")
    parser.add_argument("--threads", type=int, default=0, help="threads per run (default: cores / jobs)")
    parser.add_argument("--realdata", default=None, help="the folder of the sets (default ../shared/realdata)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reuse", metavar="NAME", default=None,
                        help="start each run from a copy of variant NAME's finished runs at the same seed")
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args(argv)
    set_dir = realdata_root(args.realdata) / args.set
    if not (set_dir / "ImageNet-Subset").is_dir():
        print(f"skipped: no real photos at {set_dir} (they live in ../shared/realdata beside the repository "
              "where a course machine has them; --realdata points elsewhere)")
        return 0
    variants = [parse_variant(v) for v in (args.variant or ["main"])]
    if not args.no_plain:
        variants.append((PLAIN, {}))
    jobs = [(name, env, seed) for seed in args.seeds for name, env in variants]
    if not args.report:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for result in pool.map(lambda job: (job, run_one(set_dir, *job, args)), jobs):
                (name, _, seed), scores = result
                print(f"{args.set} / {name} seed {seed}: accuracy {_fmt(scores['test_accuracy'])}, "
                      f"mIoU {_fmt(scores['test_miou'])}, {scores['seconds'] / 60:.1f} min", flush=True)
    print(report(args.set, collect(Path(args.out), args.set, [n for n, _ in variants], args.seeds), args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
