"""Fault injection: SIGKILL `python -m helpers run` (smoke preset, demo data) again and again, restart it
each time, and check that it ends as an uninterrupted run does.

    python scripts/fault_injection.py --kills 24 --seed 0 --work /tmp/faults

Kills land at random moments and, on purpose, inside a cache build, a cache write, a checkpoint write,
the submission write and the submission swap: the hooks in scripts/fault_hooks/ (loaded into the
runner and every kernel through PYTHONPATH) pause the run there and the harness kills it during the
pause. Half the kills hit the runner alone (its kernels must end by themselves), half the runner and
all its children at once (a machine that dies). After each kill the harness waits for the run's
kernels to be gone; after each finished run it checks: no partial, `.tmp` or lock file left, every
checkpoint loads, and the submission is byte for byte the one of an uninterrupted run.
Prints a markdown table (the README's) and exits 1 on any failed check.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).resolve().parent / "fault_hooks"
SUMMARY_KEYS = ("baseline_val_acc", "pseudo_val_acc", "classifier", "segmenter", "mask_method", "val_miou",
                "test_accuracy", "test_miou")


@dataclass
class Kill:
    """One kill: when and how, where it landed, the work it cost, and what the next attempt resumed."""

    at: float  # seconds into the attempt
    mode: str  # "runner" (SIGKILL the runner only) or "tree" (the runner and its kernels at once)
    armed: str  # the hook point it was aimed at ("" for a random moment)
    landed: str = ""
    lost: float = 0.0  # seconds since the attempt's last durable save (checkpoint, cache, summary, zip)
    kernels_gone: float = 0.0  # seconds until no kernel of the run was left
    resumed: str = ""


@dataclass
class Attempt:
    """One start of the job: its exit code (None: killed), times, output, the kill if any, problems seen."""

    code: int | None
    t0: float
    t1: float
    output: list[tuple[float, str]]
    kill: Kill | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Wall time of this start."""
        return self.t1 - self.t0


class Job:
    """`python -m helpers run --preset smoke --out OUT` with the fault hooks, started and killed at will."""

    def __init__(self, out: Path, python: str = sys.executable, preset: str = "smoke", data_root: Path | None = None):
        self.out, self.python, self.preset, self.data_root = out, python, preset, data_root
        self.faults = out.with_name(out.name + "-events")
        self.faults.mkdir(parents=True, exist_ok=True)
        self.run_dir = str((out / "runs" / preset).resolve())

    def env(self, arm: str = "") -> dict[str, str]:
        """The environment of an attempt: hooks on PYTHONPATH, the events folder, the armed point."""
        path = os.pathsep.join([str(HOOKS), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {**os.environ, "PYTHONPATH": path, "IMSUB_ROOT": str(REPO), "IMSUB_FAULT_DIR": str(self.faults),
                "IMSUB_RUN_DIR": self.run_dir,  # one dataset here: out/runs/<preset>, without the dataset level
                "IMSUB_FAULT_ARM": arm, "PYTHONUNBUFFERED": "1"}

    def command(self) -> list[str]:
        """The headless job (on the demo data, or on `data_root` where given)."""
        where = ["--data-root", str(self.data_root)] if self.data_root else []
        return [self.python, "-m", "helpers", "run", "--preset", self.preset, "--out", str(self.out), *where]

    def events(self, since: float = 0.0, until: float = float("inf")) -> list[dict]:
        """Hook events logged between two times."""
        path = self.faults / "events.jsonl"
        if not path.is_file():
            return []
        found = []
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if since <= event["t"] <= until:
                found.append(event)
        return found

    def kernels(self) -> list:
        """Live processes of this run other than the harness (psutil processes)."""
        import psutil

        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("IMSUB_RUN_DIR") == self.run_dir:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def attempt(self, arm: str = "", kill_at: float | None = None, mode: str = "runner",
                during_pause=None, timeout: float = 900) -> Attempt:
        """Start the job; kill it when the armed hook pauses it or at `kill_at` seconds; else let it finish."""
        import psutil

        t0 = time.time()
        proc = subprocess.Popen(self.command(), env=self.env(arm), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        output: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: [output.append((time.time() - t0, line.rstrip()))
                                                  for line in proc.stdout], daemon=True)
        reader.start()
        notes, problems, due = [], [], None
        while proc.poll() is None and time.time() - t0 < timeout:
            if arm and any(e["ev"] == "hit" for e in self.events(t0)):
                if during_pause is not None:
                    ok, note = during_pause(self, proc)
                    (notes if ok else problems).append(note)
                due = time.time()
                break
            if kill_at is not None and time.time() - t0 >= kill_at:
                due = time.time()
                break
            time.sleep(0.02)
        if due is None:
            if proc.poll() is None:  # the job hangs
                proc.kill()
                problems.append(f"the job did not end within {timeout:.0f} s: stopped")
            code = proc.wait()
            reader.join(10)
            return Attempt(code, t0, time.time(), output, notes=notes, problems=problems)
        family = []
        if mode == "tree":
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                family = []
        t_kill = time.time()
        for pid in [proc.pid] + [p.pid for p in family]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        reader.join(10)
        kill = Kill(at=t_kill - t0, mode=mode, armed=arm)
        while self.kernels() and time.time() - t_kill < 15:
            time.sleep(0.05)
        kill.kernels_gone = time.time() - t_kill
        for orphan in self.kernels():
            problems.append(f"orphan: process {orphan.pid} of the run still running 15 s after the kill")
            orphan.kill()
        kill.landed, kill.lost = self._landing(t0, t_kill, output)
        return Attempt(None, t0, t_kill, output, kill, notes, problems)

    def _landing(self, t0: float, t_kill: float, output: list[tuple[float, str]]) -> tuple[str, float]:
        """Where a kill landed (the notebook, the operation in progress) and the seconds of work it cost.

        Work lost: from the attempt's last durable save (a checkpoint, a cache, summary.json, the zip)
        or its start, to the kill, or to the hook's pause for an aimed kill (the pause is no work).
        """
        notebook = next((line[3:].split(".")[0] for t, line in reversed(output)
                         if line.startswith("== ") and t <= t_kill - t0), "start-up")
        events = self.events(t0, t_kill)
        hit = next((e for e in events if e["ev"] == "hit"), None)
        open_ops: dict[tuple, dict] = {}
        for e in events:
            key = (e["pid"], e["point"], e["path"])
            if e["ev"] == "begin":
                open_ops[key] = e
            elif e["ev"] == "end":
                open_ops.pop(key, None)
        op = hit or (max(open_ops.values(), key=lambda e: e["t"]) if open_ops else None)
        if op is not None:
            where = f"inside {op['point']}" + ("" if op["point"].startswith("submission") else f" ({_name(op['path'])})")
        else:
            last = next((e for e in reversed(events) if e["ev"] in ("saved", "loaded", "cache-read", "end")), None)
            where = (f"{t_kill - last['t']:.1f} s after {last['ev']} {_name(last['path']) or last['point']}"
                     if last else "before any file was touched")
        end = hit["t"] if hit else t_kill
        durable = [e["t"] for e in events if e["ev"] == "saved" and e["t"] <= end
                   and e["path"].endswith((".pt", "summary.json", ".zip"))]
        return f"{notebook}: {where}", end - max(durable, default=t0)

    def resumed(self, before: float, t0: float, t1: float, output: list[tuple[float, str]]) -> str:
        """What the start [t0, t1] picked up from the ones since `before`: checkpoints, killed cache builds,
        partial files removed, orphan kernels ended, a submission restored."""
        earlier, now = self.events(before, t0), self.events(t0, t1)
        unfinished: dict[tuple, dict] = {}
        for e in earlier:
            if e["ev"] in ("begin", "end") and e["point"] in ("cache-build", "cache-write"):
                key = (e["pid"], e["point"], e["path"])
                if e["ev"] == "begin":
                    unfinished[key] = e
                else:
                    unfinished.pop(key, None)
        # a cache whose build or write was killed: "caching labeled" or ".../labeled_32.pt.tmp" -> "caching labeled"
        killed_builds = {"caching " + re.sub(r"_\d+\.pt$", "", _name(e["path"])) if e["point"] == "cache-write"
                         else e["path"] for e in unfinished.values()}
        parts, seen, saved = [], set(), set()
        for e in now:
            name = _name(e["path"])
            if e["ev"] == "saved":
                saved.add(name)
            elif e["ev"] == "loaded" and name.endswith(".pt") and e.get("epochs") and name not in seen | saved:
                seen.add(name)
                done = e["epoch"] == e["epochs"]
                parts.append(f"{Path(name).stem} " + ("finished, reused" if done else
                                                      f"resumed after epoch {e['epoch']}/{e['epochs']}"))
            elif e["ev"] == "begin" and e["point"] == "cache-build" and e["path"] in killed_builds:
                killed_builds.discard(e["path"])
                parts.append(f"{_name(e['path'])} cache built again")
            elif e["ev"] == "rename" and ".old-" in Path(e.get("src", "")).name:
                parts.append("previous submission put back from its .old copy")
        for _, line in output:
            if line.startswith(("removing ", "ending kernel ")):
                parts.append(line.split(",")[0])
        return "; ".join(parts) or "nothing to resume: started over"


def _name(path: str) -> str:
    """A short name for a path or a cache build ("caching labeled" -> "labeled", "x.pt.tmp" -> "x.pt")."""
    name = Path(path).name
    return name.removeprefix("caching ").removesuffix(".tmp")


def verify(out: Path, reference: Path) -> list[str]:
    """Problems of a finished run: leftovers, unreadable checkpoints, a submission unlike the reference."""
    import torch

    problems = []
    for path in out.rglob("*"):
        name = path.name
        if name.endswith((".tmp", ".lock")) or ".tmp-" in name or ".old-" in name:
            problems.append(f"left over: {path.relative_to(out)}")
    for path in out.rglob("*.pt"):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a problem
            problems.append(f"unreadable: {path.relative_to(out)} ({exc})")
    mine, ref = out / "submission", reference / "submission"
    files = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file() and p.suffix != ".zip")
    got = sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file() and p.suffix != ".zip")
    if files != got:
        problems.append(f"submission files differ: {sorted(set(files) ^ set(got))[:5]}")
    problems += [f"differs from the uninterrupted run: submission/{f}" for f in files
                 if (mine / f).is_file() and (mine / f).read_bytes() != (ref / f).read_bytes()]
    try:
        with zipfile.ZipFile(mine / "submission.zip") as a, zipfile.ZipFile(ref / "submission.zip") as b:
            if sorted((i.filename, i.CRC) for i in a.infolist()) != sorted((i.filename, i.CRC) for i in b.infolist()):
                problems.append("submission.zip holds other files or bytes than the uninterrupted run's")
    except (OSError, zipfile.BadZipFile) as exc:
        problems.append(f"submission.zip unreadable: {exc}")
    summaries = [json.loads((d / "runs" / "smoke" / "summary.json").read_text()) for d in (out, reference)]
    for key in SUMMARY_KEYS:
        if summaries[0].get(key) != summaries[1].get(key):
            problems.append(f"summary {key}: {summaries[0].get(key)} vs {summaries[1].get(key)} uninterrupted")
    return problems


def second_run_refused(job: Job, first: subprocess.Popen) -> tuple[bool, str]:
    """Start the same job while the first one is paused: it must stop at once, naming the first."""
    start = time.time()
    second = subprocess.run(job.command(), env=job.env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    ok = second.returncode == 3 and f"in use by process {first.pid}" in second.stderr
    said = second.stderr.strip().splitlines()[-1][:240] if second.stderr.strip() else ""
    return ok, (f"a second run on the same folder {'stopped' if ok else 'WAS NOT STOPPED'}: exit "
                f"{second.returncode} after {time.time() - start:.1f} s, saying: {said}")


def run_until_done(job: Job, plan: list[tuple[str, str, float | None]], during_first_pause=None) -> dict:
    """Start `job` again and again, applying the kills of `plan` in order, until a start ends by itself.

    Returns the kills (with what the following start resumed), the last attempt, the problems and
    notes seen, the total seconds of all starts, and the plan entries that found the job finished first.
    """
    kills, problems, notes, seconds, unused = [], [], [], 0.0, []
    pending: Kill | None = None
    pending_t0 = 0.0
    while True:
        spec = plan.pop(0) if plan else None
        arm, mode, at = spec or ("", "runner", None)
        during = during_first_pause if (arm and during_first_pause and not kills and pending is None) else None
        attempt = job.attempt(arm, at, mode, during_pause=during)
        seconds += attempt.seconds
        problems += attempt.problems
        notes += attempt.notes
        for note in attempt.notes + attempt.problems:
            print("  ", note, flush=True)
        if pending is not None:
            pending.resumed = job.resumed(pending_t0, attempt.t0, attempt.t1, attempt.output)
            if attempt.kill is not None and pending.resumed.startswith("nothing"):
                pending.resumed = f"nothing yet: killed in turn at {attempt.kill.at:.1f} s, before it loaded a file"
            kills.append(pending)
            print("  ", row(len(kills), job.out.name, pending), flush=True)
            pending = None
        if attempt.kill is None:
            if spec is not None:
                unused.append(spec)  # the job finished before this kill came
            break
        pending, pending_t0 = attempt.kill, attempt.t0
        print(f"   killed at {pending.at:.1f} s ({pending.mode}): {pending.landed}", flush=True)
    if attempt.code != 0:
        tail = " / ".join(re.sub(r"\x1b\[[0-9;]*m", "", line) for _, line in attempt.output[-5:])
        problems.append(f"the job ended with exit code {attempt.code}: {tail}")
    return {"kills": kills, "last": attempt, "problems": problems, "notes": notes, "seconds": seconds,
            "unused": unused}


TARGETS = [  # (armed point, kill mode), in the order the job reaches them (01 builds the test cache too)
    ("cache-build@labeled", "runner"), ("cache-write@labeled", "tree"), ("cache-build@test", "runner"),
    ("checkpoint-write@classifier_baseline#2", "tree"), ("cache-build@unlabeled", "runner"),
    ("checkpoint-write@classifier_pseudo", "tree"), ("checkpoint-write@unet_from_classifier#2", "runner"),
    ("submission-write", "tree"),
]
TABLE_HEAD = ("| # | run, kill | killed at (s) | aimed at | kill | landed in | work lost (s) | kernels gone after (s) | "
              "the next start resumed |\n|---|---|---|---|---|---|---|---|---|")


def row(n: int, label: str, kill: Kill) -> str:
    """One line of the README table."""
    aim = f"`{kill.armed}`" if kill.armed else "random"
    return (f"| {n} | {label} | {kill.at:.1f} | {aim} | {kill.mode} | {kill.landed} | {kill.lost:.1f} | "
            f"{kill.kernels_gone:.1f} | {kill.resumed} |")


def main(argv: list[str] | None = None) -> int:
    """Run the reference, then killed runs until `--kills` kills have landed; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imsub-faults"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)

    reference = Job(args.work / "reference")
    ref = reference.attempt()
    print(f"uninterrupted run: exit {ref.code} in {ref.seconds:.0f} s", flush=True)
    if ref.code != 0:
        print("\n".join(line for _, line in ref.output[-30:]))
        return 1
    # Run 0: the aimed kills, in the order the job meets their points, so that each start gets a bit
    # further, then once more with a kill in the submission swap. Then fresh runs with up to three
    # kills at random moments each; a moment the run outlived is drawn again within its duration.
    targets = [(arm, mode, None) for arm, mode in TARGETS]
    randoms = [("", "tree" if i % 2 else "runner", round(rng.uniform(1.0, 0.9 * ref.seconds), 1))
               for i in range(max(0, args.kills - len(TARGETS) - 1))]
    rows, problems, seconds, episode = [], [], 0.0, 0
    while episode == 0 or randoms:
        job = Job(args.work / f"run{episode}")
        if episode == 0:
            plan = targets
        else:
            plan, randoms = randoms[:3], randoms[3:]
        result = run_until_done(job, plan, during_first_pause=second_run_refused if episode == 0 else None)
        if episode:
            randoms = plan + randoms  # the kills this run finished before reaching: for the next run
        seconds += result["seconds"]
        problems += result["problems"]
        rows += [row(len(rows) + i + 1, f"run {episode}, kill {i + 1}", k) for i, k in enumerate(result["kills"])]
        for arm, mode, _at in result["unused"]:
            if arm:
                problems.append(f"the aimed kill {arm} was never reached")
            else:
                randoms.append((arm, mode, round(rng.uniform(1.0, 0.9 * result["last"].seconds), 1)))
        found = verify(job.out, reference.out)
        problems += found
        print(f"run {episode}: {len(result['kills'])} kills, then finished: "
              + ("same submission as the uninterrupted run, nothing left over" if not found else "; ".join(found)),
              flush=True)
        if episode == 0:  # the finished run started again, killed while it swaps in its new submission
            again = run_until_done(job, [("submission-swap", "runner", None)])
            seconds += again["seconds"]
            problems += again["problems"] + (["the submission swap was never reached"] if again["unused"] else [])
            rows += [row(len(rows) + 1, f"run {episode}, once more", k) for k in again["kills"]]
            found = verify(job.out, reference.out)
            problems += found
            print("killed in the swap, started again: " + ("same submission" if not found else "; ".join(found)),
                  flush=True)
        episode += 1

    print(f"\n{len(rows)} kills in {episode} runs; uninterrupted run {ref.seconds:.0f} s; all the starts of the "
          f"killed runs together {seconds:.0f} s\n")
    print(TABLE_HEAD)
    print("\n".join(rows))
    print(f"\n{len(problems)} failed checks" + (":\n  " + "\n  ".join(problems) if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
