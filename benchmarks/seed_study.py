"""Compare settings over seeds: headless runs of the notebooks per (variant, seed), scored on the demo test truth.

    python benchmarks/seed_study.py --out /tmp/study --seeds 0 1 2 \\
        --variant main --variant adaptive:CONSISTENCY_THRESHOLD=adaptive \\
        --reuse main --only 03,04,05 --fresh classifier_pseudo,unet

Each variant is NAME[:FIELD=VALUE,FIELD=VALUE] (IMSUB_ overrides, prefix optional; `--common` ones
apply to every variant, e.g. to measure against an earlier default). A variant runs
`python -m helpers run --preset cpu` in OUT/NAME/s<seed>. With --reuse, variants other than the
reused one start from a copy of its run folder (minus the checkpoints whose names start with a
--fresh prefix) and run only the --only notebooks: equal epochs, and the untouched stages are the
very same models. After each run, benchmarks/eval_run.py scores every checkpoint on the hidden test
truth. The table at the end gives per-seed and mean numbers; `--report` reprints it without running.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helpers.config import DEFAULT_INIT, run_folder_name  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"name:FIELD=V,FIELD=V" -> (name, {"IMSUB_FIELD": "V"})."""
    name, _, rest = text.partition(":")
    env = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().upper()
        env[key if key.startswith("IMSUB_") else "IMSUB_" + key] = value.strip()
    return name, env


def variant_envs(variants: list[str], common: str = "") -> list[tuple[str, dict[str, str]]]:
    """Each "--variant" as (name, IMSUB_ environment): the `common` overrides, then the variant's own."""
    shared = parse_variant(":" + common)[1]
    return [(name, {**shared, **env}) for name, env in map(parse_variant, variants)]


def run_one(name: str, env: dict[str, str], seed: int, args) -> Path:
    """Run (or resume) one variant at one seed; return its output folder."""
    out = Path(args.out) / name / f"s{seed}"
    reused = args.reuse and name != args.reuse
    run_folder = out / "runs" / run_folder_name(args.preset, env.get("IMSUB_INIT", DEFAULT_INIT))
    if reused and not (out / "runs").exists():
        # the reused variant's run folder, renamed to this variant's (another start has another name)
        source = next((Path(args.out) / args.reuse / f"s{seed}" / "runs").glob(f"{args.preset}*/summary.json")).parent
        shutil.copytree(source, run_folder)
        for ckpt in run_folder.rglob("*.pt"):
            if any(ckpt.stem.startswith(p) for p in args.fresh.split(",") if p):
                ckpt.unlink()
    command = [sys.executable, "-m", "helpers", "run", "--preset", args.preset, "--out", str(out)]
    if args.data_root:
        command += ["--data-root", args.data_root]
    if reused and args.only:
        command += ["--only", args.only]
    environment = {**os.environ, **env, "IMSUB_SEED": str(seed), "PYTHONPATH": str(ROOT), "IMSUB_ROOT": str(ROOT),
                   "IMSUB_RUN_DIR": str(run_folder)}  # one dataset per study: out/runs/<preset>, no dataset level
    log = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, env=environment, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{name} seed {seed} failed; see {log}")
    score = [sys.executable, str(ROOT / "benchmarks" / "eval_run.py"), "--preset", args.preset,
             "--run-dir", str(run_folder), "--json", str(out / "eval.json")]
    if args.data_root:
        score += ["--data-root", args.data_root]
    subprocess.run(score, env=environment, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def collect(out_root: Path, names: list[str], seeds: list[int], preset: str) -> dict:
    """{name: {seed: {"summary": ..., "eval": ...}}} for the runs that finished."""
    found: dict = {}
    for name in names:
        for seed in seeds:
            folder = out_root / name / f"s{seed}"
            found_summaries = sorted((folder / "runs").glob(f"{preset}*/summary.json"))
            summary, scores = (found_summaries or [folder / "runs" / preset / "summary.json"])[0], folder / "eval.json"
            if summary.is_file() and scores.is_file():
                found.setdefault(name, {})[seed] = {"summary": json.loads(summary.read_text()),
                                                    "eval": json.loads(scores.read_text())}
    return found


def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def report(found: dict, seeds: list[int]) -> str:
    """Markdown: per variant, per-seed and mean test accuracy and mIoU of the submission, and stage times."""
    lines = ["| variant | test acc. per seed | mean | test mIoU per seed | mean | chosen | minutes per run |",
             "|---|---|---|---|---|---|---|"]
    for name, by_seed in found.items():
        rows = [by_seed[s] for s in seeds if s in by_seed]
        acc = [r["summary"].get("test_accuracy", float("nan")) for r in rows]
        miou = [r["summary"].get("test_miou", float("nan")) for r in rows]
        minutes = [sum(r["summary"].get("stage_seconds", {}).values()) / 60 for r in rows]
        chosen = ", ".join(sorted({f"{r['summary'].get('classifier')}+{r['summary'].get('segmenter')}"
                                   + (" (final fit)" if r["summary"].get("final_classifier") else "") for r in rows}))
        lines.append(f"| {name} | {_fmt(acc)} | **{sum(acc) / len(acc):.3f}** | {_fmt(miou)} | "
                     f"**{sum(miou) / len(miou):.3f}** | {chosen} | {_fmt(minutes)} |")
    lines += ["", "Every checkpoint, test scores (mean over seeds):", ""]
    for name, by_seed in found.items():
        rows = [by_seed[s]["eval"] for s in seeds if s in by_seed]
        for kind, key in (("classifiers", "test_acc"), ("segmenters", None)):
            for model in rows[0][kind]:
                if key:
                    values = [r[kind][model][key] for r in rows if model in r[kind]]
                    lines.append(f"- {name} / {model}: test acc {_fmt(values)} (mean {sum(values) / len(values):.3f})")
                else:
                    for method in rows[0][kind][model]:
                        values = [r[kind][model][method] for r in rows if model in r[kind]]
                        lines.append(f"- {name} / {model} / {method}: test mIoU {_fmt(values)} "
                                     f"(mean {sum(values) / len(values):.3f})")
    return "\n".join(lines)


def main() -> None:
    """Run the variants over the seeds (skipping finished runs), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--reuse", default=None, help="variant whose runs the others start from")
    parser.add_argument("--only", default=None, help="notebooks the reusing variants run, e.g. 03,04,05")
    parser.add_argument("--fresh", default="", help="checkpoint name prefixes the reusing variants retrain")
    parser.add_argument("--common", default="", help="FIELD=VALUE,... overrides for every variant (its own win)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--report", action="store_true", help="only print the table of the finished runs")
    args = parser.parse_args()
    variants = variant_envs(args.variant, args.common)
    if args.reuse:  # the reused variant runs first
        variants.sort(key=lambda v: v[0] != args.reuse)
    if not args.report:
        for seed in args.seeds:
            for name, env in variants:
                folder = Path(args.out) / name / f"s{seed}"
                if (folder / "eval.json").is_file():
                    continue
                print(f"{name} seed {seed} ...", flush=True)
                run_one(name, env, seed, args)
    print(report(collect(Path(args.out), [n for n, _ in variants], args.seeds, args.preset), args.seeds))


if __name__ == "__main__":
    main()
