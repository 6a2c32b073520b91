"""Headless runs: execute the numbered notebooks in order, as a student would, and summarise.

`python -m helpers run` and `make run` use this. Each notebook runs in a fresh kernel with the
run's settings passed as IMSUB_* environment variables, so the headless job performs exactly the
notebooks' steps with the same helpers functions. Training resumes from its checkpoints, so an
interrupted run picks up where it stopped when started again. A notebook whose metadata declares
a need the dataset does not meet (`"imsub": {"needs": ["unlabeled"]}` in 03) is skipped with a
note in the summary, and the later notebooks continue from the best model there is.

A run holds `run_dir/run.lock` (helpers.fileops.folder_lock): a second run on the same run folder
stops with a message naming the first. The kernels are not in the runner's process group
(jupyter_client starts each in its own session); when the runner is killed, ipykernel's parent
poller ends them within a second, and a restarted run ends any left over before it starts.

Why nbclient and not papermill, the usual tool for executing parameterized notebooks: papermill
runs notebooks on nbclient too, and adds parameters injected into a tagged cell, an output
notebook saved cell by cell, and a per-cell progress bar. Our notebooks take every setting from
`helpers.get_config()` and IMSUB_* environment variables, the way a student sets them in
JupyterLab, Colab or a terminal alike; injected parameters would be a second, notebook-only way
to configure a run that the notebooks would then have to reconcile. What the job needs beyond
executing cells (the run-folder lock, ending orphaned kernels, removing partial files after a
kill, skipping a notebook whose data is missing, stage times in the summary) papermill does not
provide, so it would be one more dependency wrapped by the same code. The executed copies are
written after each notebook (errors included) to build/notebooks/ for a look afterwards.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# nbformat validates notebooks with jsonschema, which imports rfc3987_syntax where installed (it
# comes with JupyterLab); that module compiles about 35 Lark grammars at import, 1-2 s of every
# runner start (python-jsonschema/jsonschema#1428). It checks only the "iri" formats, which no
# notebook schema uses, and jsonschema does without it (an ImportError it expects).
sys.modules.setdefault("rfc3987_syntax", None)

from .config import ENV_PREFIX, project_root
from .fileops import folder_lock
from .metrics import NO_MASKS
from .progress import PROGRESS_ENV, RunProgress, duration

PROGRESS_FILE = "progress.json"  # in the run folder: the running training's epoch, for the progress line


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (the job runs the notebooks themselves)."""
    folder = project_root() / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: run from a clone of the repository (or set IMSUB_ROOT to it)")
    return folder


def list_notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only those whose number or name is in `only`."""
    found = sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [nb for nb in found if nb.stem[:2] in only or nb.stem in only]
    if not found:
        raise FileNotFoundError(f"no notebooks matching {only or 'NN_*.ipynb'} in {notebooks_dir()}")
    return found


@contextmanager
def _environment(values: dict[str, str]):
    """Temporarily set environment variables (the kernels inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_settings(preset: str, data_root: str | None = None, out: str | None = None,
                 side_runs: bool = False) -> dict[str, str]:
    """The IMSUB_* variables of a run: preset, data root and, with `out`, every output folder under it.

    With `out`, the run folders go under out/runs, named as by default (<dataset>/<preset>, with
    "-scratch" for IMSUB_INIT=scratch): demo and real runs, or two starts, never share one.
    The main job leaves out the comparisons that no later step uses (`Config.side_runs`) unless
    `side_runs` or $IMSUB_SIDE_RUNS asks for them: they feed no choice and no submission.
    """
    values = {ENV_PREFIX + "PRESET": preset}
    if side_runs or not os.environ.get(ENV_PREFIX + "SIDE_RUNS"):
        values[ENV_PREFIX + "SIDE_RUNS"] = "1" if side_runs else "0"
    if data_root:
        values[ENV_PREFIX + "DATA_ROOT"] = str(Path(data_root).expanduser().resolve())
    if out:
        out_dir = Path(out).expanduser().resolve()
        values.update({ENV_PREFIX + "RUNS_DIR": str(out_dir / "runs"),
                       ENV_PREFIX + "CACHE_DIR": str(out_dir / "cache"),
                       ENV_PREFIX + "SUBMISSION_DIR": str(out_dir / "submission")})
    return values


def kernel_transport(folder: str | os.PathLike):
    """The kernels' connection: local sockets in a private folder where the OS has them, else encrypted TCP.

    ipykernel warns "Kernel is running over TCP without encryption" on the default connection (TCP on
    localhost, plain text). A headless run needs no network: on Linux and macOS the kernel talks over
    Unix sockets (IPC) in `folder`, which only this user can open, and ipykernel has nothing to warn
    about. Elsewhere (Windows), or where `folder` is too deep for a socket's path (a long $TMPDIR),
    the kernel manager provisions CurveZMQ keys where jupyter_client and pyzmq support them, else
    TCP on localhost. Returns the traitlets Config for nbclient.
    """
    from traitlets.config import Config as TraitletsConfig

    config = TraitletsConfig()
    if os.name == "posix" and ipc_path_fits(folder):
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(folder) / "kernel")
    else:
        import zmq
        from jupyter_client.manager import KernelManager

        if KernelManager.class_traits().get("transport_encryption") is not None and zmq.has("curve"):
            config.KernelManager.transport_encryption = "auto"
    return config


def ipc_path_fits(folder: str | os.PathLike) -> bool:
    """Whether the kernel's sockets in `folder` (named kernel-<n>) have short enough paths to be opened."""
    import zmq

    # sun_path: 108 bytes on Linux, 104 on macOS, the trailing NUL included; pyzmq knows this system's.
    limit = getattr(zmq, "IPC_PATH_MAX_LEN", 0) or 103
    return len(os.fsencode(str(Path(folder) / "kernel-99"))) <= limit


SOCKETS_PREFIX = "imsub-kernel-"  # + the runner's pid: the kernels' socket folder in the temp folder


def _remove_stale_socket_folders() -> None:
    """Remove the kernel socket folders that killed runners left in the temp folder (their pid is gone)."""
    import shutil
    import tempfile

    from .fileops import pid_alive

    for folder in Path(tempfile.gettempdir()).glob(SOCKETS_PREFIX + "*-*"):
        pid = folder.name[len(SOCKETS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def execute_notebook(path: Path, executed_dir: Path, timeout: int | None = None, progress=None) -> float:
    """Run one notebook in a fresh kernel; save the executed copy; return its wall time in seconds.

    progress: a helpers.progress.RunProgress told which cell (and section) runs.
    """
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    from .progress import sections

    nb = nbformat.read(path, as_version=4)
    executed_dir.mkdir(parents=True, exist_ok=True)
    target = executed_dir / path.name
    where = sections(nb.cells)

    def on_cell_start(cell, cell_index):
        if progress is not None and cell.get("cell_type") == "code":
            progress.start_cell(*where[cell_index])

    start = time.perf_counter()
    _remove_stale_socket_folders()
    with tempfile.TemporaryDirectory(prefix=f"{SOCKETS_PREFIX}{os.getpid()}-") as sockets:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=kernel_transport(sockets),
                                resources={"metadata": {"path": str(path.parent)}}, on_cell_start=on_cell_start)
        try:
            client.execute()
        finally:
            tmp = target.with_name(target.name + ".tmp")
            nbformat.write(nb, tmp)  # the executed copy, errors included, for a look afterwards
            os.replace(tmp, target)
    return time.perf_counter() - start


def _orphan_kernels(run_dir: Path) -> list:
    """Kernels of an earlier run of `run_dir` whose runner is gone (psutil processes; [] without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for proc in psutil.process_iter(["ppid"]):
        try:
            env = proc.environ()
            parent = int(env.get("JPY_PARENT_PID") or 0)
            if (parent and env.get(ENV_PREFIX + "RUN_DIR") == str(run_dir) and proc.info["ppid"] != parent
                    and proc.pid != os.getpid()):
                found.append(proc)
        except (psutil.Error, OSError, ValueError):
            continue
    return found


def _clean_up_after_kill(run_dir: Path) -> None:
    """Before a run starts (holding the lock): end orphaned kernels, remove partial `*.tmp` files."""
    for proc in _orphan_kernels(run_dir):
        print(f"ending kernel {proc.pid} left running by an interrupted run of {run_dir}")
        try:
            proc.kill()
            proc.wait(10)
        except Exception:  # noqa: BLE001 - it may have ended on its own meanwhile
            pass
    for tmp in sorted(run_dir.glob("*.tmp")):
        if tmp.is_file():
            print(f"removing {tmp.name}, a partial file left by an interrupted run")
            tmp.unlink(missing_ok=True)


def notebook_needs(path: Path) -> list[str]:
    """What a notebook declares it needs in its metadata (`"imsub": {"needs": ["unlabeled"]}`)."""
    return list(json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("imsub", {}).get("needs", []))


def missing_needs(path: Path, index) -> list[str]:
    """The needs of a notebook this dataset does not meet ("unlabeled": it has no unlabeled images)."""
    have = {"unlabeled": bool(index.unlabeled)}
    return [need for need in notebook_needs(path) if not have.get(need, True)]


def notebook_fingerprint(path: Path, code: str) -> str:
    """What a finished notebook's result depends on: its cells, the helpers code (`code_digest`), the IMSUB_ settings."""
    import dataclasses
    import hashlib

    from .config import Config

    digest = hashlib.sha256(path.read_bytes() + code.encode())
    for name in sorted(ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Config)):
        if name in os.environ and name != ENV_PREFIX + "RUN_DIR":  # the run folder is the record's own place
            digest.update(f"{name}={os.environ[name]}\n".encode())
    return digest.hexdigest()[:16]


def code_digest() -> str:
    """A hash of every helpers/*.py file (names and contents)."""
    import hashlib

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run(preset: str, data_root: str | None = None, out: str | None = None,
        only: list[str] | None = None, again: bool = False, side_runs: bool = False) -> dict:
    """Execute the notebooks for a preset/data/output, then return the run's summary with stage times.

    A run stopped midway (killed, or a notebook failed) continues at the notebook it stopped in: the
    notebooks it finished before are not executed again where their cells, the helpers code and the
    IMSUB_ settings are unchanged (`notebook_fingerprint`, kept in the run record) and their executed
    copies exist. A finished run started again executes every notebook (they reuse the checkpoints),
    as does `again=True` (`--again`) or `only`. Raises helpers.fileops.FolderInUseError when another
    run uses the same run folder.
    """
    from .checkpoints import read_save_log
    from .config import get_config
    from .data import load_index
    from .pipeline import load_record, record

    settings = run_settings(preset, data_root, out, side_runs)
    notebooks = list_notebooks(only)
    with _environment(settings):
        # The data first (the demo generated once): the run folder is named after its annotation file.
        cfg = get_config()
        run_dir = Path(cfg.run_dir).resolve()
        # Every kernel gets the run folder in its environment, which is how a later run recognises orphans.
        with _environment({ENV_PREFIX + "RUN_DIR": str(run_dir)}), folder_lock(run_dir, "run folder"):
            _clean_up_after_kill(run_dir)
            executed = (Path(out).expanduser().resolve() if out else project_root() / "build") / "notebooks"
            print(f"preset {cfg.preset}, data {cfg.data_root} ({cfg.data_source}), checkpoints {cfg.run_dir}")
            earlier = load_record(cfg)
            times = dict(earlier.get("stage_seconds", {}))
            done = dict(earlier.get("notebooks_done", {}))
            index = load_index(cfg.data_root)
            skipped = {}
            missing = {nb.stem: missing_needs(nb, index) for nb in notebooks}
            code = code_digest()
            prints = {nb.stem: notebook_fingerprint(nb, code) for nb in notebooks}
            # Resume only a run that stopped midway: a finished one runs again in full.
            resuming = not (again or only) and not all(done.get(stem) == prints[stem]
                                                       for stem in prints if not missing[stem])
            # The kernels report each training's epochs to this file; the progress line reads it.
            progress_file = run_dir / PROGRESS_FILE
            with _environment({PROGRESS_ENV: str(progress_file)}), \
                    RunProgress([nb.stem for nb in notebooks], times, progress_file) as progress:
                for nb in notebooks:
                    progress.message(f"== {nb.name}")
                    if missing[nb.stem]:  # e.g. no train-unlabeled/: 03 has nothing to learn from; 04 and 05 go on
                        skipped[nb.stem] = f"the dataset has no {' and no '.join(missing[nb.stem])} images"
                        progress.message(f"   skipped: {skipped[nb.stem]}")
                        progress.end_notebook(nb.stem)
                        times.pop(nb.stem, None)
                        record(cfg, stage_seconds=times, skipped=skipped)
                        continue
                    if resuming and done.get(nb.stem) == prints[nb.stem] and (executed / nb.name).is_file():
                        progress.message("   finished by an earlier start of this run, nothing changed since: "
                                         "not executed again (--again executes every notebook)")
                        progress.end_notebook(nb.stem)
                        continue
                    resuming = False  # from here on every notebook runs: each reads what the one before wrote
                    done = {name: value for name, value in done.items() if name < nb.stem}
                    record(cfg, notebooks_done=done)
                    progress.start_notebook(nb.stem)
                    try:
                        times[nb.stem] = round(execute_notebook(nb, executed, progress=progress), 1)
                    except Exception as exc:
                        raise RuntimeError(f"{nb.name} failed: {str(exc)[-2000:]}\nThe executed copy with the "
                                           f"error is {executed / nb.name}") from None
                    progress.end_notebook(nb.stem)
                    progress.message(f"   done in {duration(times[nb.stem])}")
                    done[nb.stem] = prints[nb.stem]
                    record(cfg, stage_seconds=times, skipped=skipped, checkpoints=read_save_log(cfg.run_dir),
                           notebooks_done=done)
            return load_record(cfg)


def format_summary(summary: dict) -> str:
    """The one-screen summary of a run: choices, validation and test scores, stage times."""
    lines = ["", "=" * 60, "Run summary", "=" * 60]
    labels = [("ssl_knn_acc", "self-supervised encoder, kNN accuracy (val)"),
              ("ssl_probe_acc", "self-supervised encoder, linear probe (val)"),
              ("baseline_val_acc", "baseline classifier, validation accuracy"),
              ("ssl_val_acc", "fine-tuned from the SSL encoder, val. accuracy"),
              ("pseudo_val_acc", "after pseudo-labeling, validation accuracy"),
              ("pseudo_precision", "pseudo-label precision (truth)"),
              ("pseudo_coverage", "pseudo-label coverage"),
              ("classifier", "chosen classifier"),
              ("segmenter", "chosen segmenter"), ("mask_method", "mask method"),
              ("final_classifier", "submitted: final fit on all labeled images"),
              ("final_segmenter", "submitted: final fit on all labeled masks"),
              ("val_miou", "validation mIoU"),
              ("test_accuracy", "TEST accuracy (truth)"), ("test_miou", "TEST mIoU (truth)"),
              ("submission", "submission"), ("write_seconds", "predict + write test submission (s)")]
    for key, label in labels:
        value = summary.get(key)
        if key == "test_miou" and summary.get("test_accuracy") is not None and not _is_number(value):
            lines.append(f"{label:<44} {NO_MASKS}")  # scored, but the truth has classes only
        elif isinstance(value, float):
            if math.isfinite(value):  # NaN: nothing to show (no truth for it), so no row
                lines.append(f"{label:<44} {value:.3f}")
        elif value is not None:
            lines.append(f"{label:<44} {value}")
    for name, why in summary.get("skipped", {}).items():
        lines.append(f"{'skipped: ' + name:<44} {why}")
    saved = summary.get("checkpoints") or {}
    if saved.get("saves"):  # every training call of this run folder so far (helpers.checkpoints' log)
        lines.append(f"{'checkpoints written (this run folder)':<44} {saved['saves']:.0f} saves, "
                     f"{saved['mb_local'] / 1e3:.2f} GB locally, {saved['mb_mirrored'] / 1e3:.2f} GB to the "
                     f"mirror, {saved['seconds']:.0f} s")
    stages = summary.get("stage_seconds", {})
    if stages:
        lines.append("-" * 60)
        for name, seconds in stages.items():
            lines.append(f"{name:<44} {seconds:7.0f} s")
        lines.append(f"{'total':<44} {sum(stages.values()):7.0f} s")
    return "\n".join(lines)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def print_summary(run_dir: str | os.PathLike) -> None:
    """Print the summary stored in a run folder."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m helpers run` first")
    print(format_summary(json.loads(path.read_text())))
