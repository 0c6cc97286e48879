"""The stage runner: run a console-script stage in a subprocess, or reuse its output when nothing changed.

A stage is one run of a cosmoinfer console script (``python -m cosmoinfer.cli.<name> args``) that
writes into its own folder. Its **fingerprint** is a hash of

* the stage's composed Hydra configuration (the ``conf/`` files with its command-line overrides
  applied, before interpolation, the output folder written as ``<out>``),
* the fingerprints of the stages it reads (a changed input redoes everything downstream),
* the cosmoinfer version.

``folder/.stage.json`` records the fingerprint, the configuration and the inputs. A stage is
**reused** only when its record says it finished under the same fingerprint; otherwise it is
**redone**, and the terminal says why (which configuration keys changed, which input changed, or
that it never finished). A stage interrupted under the same fingerprint is **resumed** when it can
be (training continues from ``last.ckpt``); under another fingerprint its folder is emptied first,
so nothing computed under one configuration is reused under another.

While a stage runs, its output goes to a log file; on a terminal one status line shows the
elapsed time and the last progress line of the log (training epochs, evaluation batches).

:meth:`StageRunner.run` runs one stage (stopping at the first failure);
:meth:`StageRunner.run_graph` runs a list of stages as a dependency graph, several at a time,
carrying on past a failed stage (its dependents are skipped) and returning what failed.
:class:`FolderLock` keeps a second run out of the folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from cosmoinfer import __version__
from cosmoinfer.errors import InputError, atomic_write_text

RECORD = ".stage.json"
#: progress lines of the stages' logs shown on the status line: training epochs, evaluation batches
PROGRESS = re.compile(r"(epoch \d+/\d+.*|evaluat\w* \d+/\d+.*|\d+%\|.*)$")


def compose_stage_config(config_name: str, overrides: list[str], out: Path) -> dict:
    """The configuration a stage will run with: ``conf/<config_name>.yaml`` plus ``overrides``.

    Hydra keys (``hydra.*``) and interpolations stay unresolved (``${now:...}`` is not a change);
    the output folder ``out`` is written as ``<out>`` so a moved run folder is still the same run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cosmoinfer.cli.common import CONF_DIR

    overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    text = OmegaConf.to_yaml(cfg, resolve=False).replace(str(out), "<out>")
    return OmegaConf.to_container(OmegaConf.create(text), resolve=False)


def _flat(d, prefix="") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, new: dict, limit: int = 3) -> str:
    """``"model.hidden 8 -> 16, trainer.max_epochs 8 -> 2"``: the keys whose values differ."""
    a, b = _flat(old), _flat(new)
    diffs = [f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def fmt_seconds(s: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class Stage:
    """One stage: ``python -m module args`` writing into ``folder``.

    ``config_name`` is the Hydra primary config the module composes (``train``, ``evaluate``...);
    ``inputs`` the stages whose outputs it reads; ``resumable`` whether a run interrupted under the
    same fingerprint may continue in its folder (training with ``resume=true``); ``outputs`` glob
    patterns (relative to ``folder``) each of which must match a file for the stage to be reused.
    ``env`` (variables added to the environment) and ``cwd`` (default: the current folder) are how
    the process runs, not what it computes: they are not part of the fingerprint.
    """

    name: str
    module: str
    config_name: str
    args: list[str]
    folder: Path
    log_file: Path
    out: Path
    inputs: list["Stage"] = field(default_factory=list)
    resumable: bool = False
    outputs: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    cwd: Path | None = None
    _config: dict | None = field(default=None, repr=False)

    @property
    def config(self) -> dict:
        if self._config is None:
            self._config = compose_stage_config(self.config_name, self.args, self.out)
        return self._config

    @property
    def fingerprint(self) -> str:
        payload = {"module": self.module, "config": self.config, "version": __version__,
                   "inputs": {s.name: s.fingerprint for s in self.inputs}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD

    def record(self) -> dict | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None

    def _write_record(self, status: str, seconds: float | None = None) -> None:
        rec = {"stage": self.name, "status": status, "fingerprint": self.fingerprint, "version": __version__,
               "inputs": {s.name: s.fingerprint for s in self.inputs}, "config": self.config,
               "time": _dt.datetime.now().isoformat(timespec="seconds")}
        if seconds is not None:
            rec["seconds"] = round(seconds, 1)
        atomic_write_text(self.record_path, json.dumps(rec, indent=1, default=str) + "\n")

    def decision(self) -> tuple[str, str]:
        """``("reuse" | "resume" | "run", why)`` from the folder's record and the current fingerprint."""
        rec = self.record()
        if rec is None:
            if self.folder.exists() and any(self.folder.iterdir()):
                return "run", "no record of the configuration it was made with"
            return "run", "new"
        if rec.get("fingerprint") == self.fingerprint:
            missing = [p for p in self.outputs if not any(self.folder.glob(p))]
            if rec.get("status") == "done" and missing:
                return "run", "output missing: " + ", ".join(missing)
            if rec.get("status") == "done":
                return "reuse", f"same configuration and inputs, finished {rec.get('time', '?')}"
            return ("resume", "interrupted; continuing") if self.resumable else ("run", "did not finish")
        changed = [name for name, fp in (rec.get("inputs") or {}).items()
                   if fp != {s.name: s.fingerprint for s in self.inputs}.get(name)]
        if changed:
            return "run", "input changed: " + ", ".join(changed)
        diff = config_changes(rec.get("config") or {}, self.config)
        if diff:
            return "run", "configuration changed: " + diff
        return "run", "cosmoinfer version changed" if rec.get("version") != __version__ else "record differs"


class StageRunner:
    """Runs stages in order, reusing the finished ones; prints one line per stage and its time.

    ``progress``: show a live status line while a stage runs (default: when stdout is a terminal).
    """

    def __init__(self, progress: bool | None = None):
        self.progress = sys.stdout.isatty() if progress is None else progress
        self.summary: list[tuple[str, str, float]] = []  # (stage, "ran" | "reused", seconds)
        self.failed: dict[str, str] = {}  # run_graph: stage -> why it failed or was skipped

    def _decide(self, stage: Stage) -> tuple[str, str]:
        """:meth:`Stage.decision`, except that a stage whose input was redone in this run is redone too."""
        action, why = stage.decision()
        redone = [s.name for s in stage.inputs if s.name in self.ran]
        if action != "run" and redone:
            return "run", "input redone: " + ", ".join(redone)
        return action, why

    @property
    def ran(self) -> set[str]:
        return {name for name, what, _ in self.summary if what == "ran"}

    def run(self, stage: Stage) -> None:
        """Reuse, resume or run ``stage``; raises ``InputError`` if it fails."""
        begun = self._begin(stage, announce=not self.progress)  # on a terminal the status line shows it
        if begun is None:
            return
        action, why = begun
        verb = "resumed" if action == "resume" else "ran"
        seconds = self._execute(stage)
        stage._write_record("done", seconds)
        print(f"[{stage.name}] {verb} in {fmt_seconds(seconds)} ({why})", flush=True)
        self.summary.append((stage.name, "ran", seconds))

    def run_together(self, stages: list[Stage], make_args, log_file: Path) -> None:
        """Run the unfinished ``stages`` (same module) as one command, e.g. a Hydra multirun on SLURM.

        ``make_args(todo)`` gives that command's arguments for the stages that are not reused.
        """
        todo = []
        for s in stages:
            action, why = self._decide(s)
            if action == "reuse":
                print(f"[{s.name}] reused ({why})", flush=True)
                self.summary.append((s.name, "reused", 0.0))
                continue
            if action == "run" and s.folder.exists():
                shutil.rmtree(s.folder)
            print(f"[{s.name}] {'resuming' if action == 'resume' else 'running'} ({why})", flush=True)
            s.folder.mkdir(parents=True, exist_ok=True)
            s._write_record("running")
            todo.append(s)
        if not todo:
            return
        group = Stage(name=", ".join(s.name for s in todo), module=todo[0].module,
                      config_name=todo[0].config_name,
                      args=make_args(todo), folder=todo[0].folder.parent, log_file=log_file, out=todo[0].out)
        print(f"[{group.name}] running together; log: {log_file}", flush=True)
        seconds = self._execute(group)
        for s in todo:
            s._write_record("done", seconds)
            self.summary.append((s.name, "ran", seconds))
        print(f"[{group.name}] ran in {fmt_seconds(seconds)}", flush=True)

    def run_graph(self, stages: list[Stage], jobs: int = 1) -> dict[str, str]:
        """Run ``stages`` in dependency order, ``jobs`` at a time; returns ``{stage: why}`` of the failed.

        A stage starts when each of its ``inputs`` that is among ``stages`` (by name) has finished,
        ran or reused; inputs outside ``stages`` are taken as they are (their fingerprints still
        count). Each stage is reused, resumed or redone as in :meth:`run`, and redone when an input
        was redone in this run. A failed stage does not stop the others: it and every stage
        downstream of it (``"skipped: <stage> failed"``) are recorded in the returned dict and in
        ``self.failed``. Interrupted (Ctrl-C, SIGTERM via :func:`terminate_on_sigterm`), it
        terminates the running stages' processes before it returns. With ``jobs > 1`` there is no
        status line, only the per-stage lines.
        """
        jobs = max(1, int(jobs))
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"stage names must be unique: {twice}")
        for s in stages:  # compose every configuration now, in this thread (Hydra's state is not for threads)
            _ = s.fingerprint
        progress = self.progress and jobs == 1
        deps = {s.name: [i.name for i in s.inputs if i.name in names] for s in stages}
        pending = dict(zip(names, stages))
        finished: set[str] = set()
        running: dict = {}  # future -> (stage, action, why)
        stop = threading.Event()
        with ThreadPoolExecutor(jobs) as pool:
            try:
                while pending or running:
                    progressed = True
                    while progressed:  # a reused stage may free its dependents at once
                        progressed = False
                        for name, s in list(pending.items()):
                            bad = [d for d in deps[name] if d in self.failed]
                            if bad:
                                del pending[name]
                                self.failed[name] = f"skipped: {bad[0]} failed"
                                print(f"[{name}] skipped ({bad[0]} failed)", flush=True)
                                progressed = True
                            elif len(running) < jobs and all(d in finished for d in deps[name]):
                                del pending[name]
                                progressed = True
                                begun = self._begin(s, announce=not progress)
                                if begun is None:
                                    finished.add(name)
                                else:
                                    running[pool.submit(self._execute, s, progress, stop)] = (s, *begun)
                    if not running:
                        for name in pending:  # nothing can start: a dependency cycle
                            self.failed[name] = "dependency cycle"
                            print(f"[{name}] skipped (dependency cycle)", flush=True)
                        break
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        s, action, why = running.pop(fut)
                        try:
                            seconds = fut.result()
                        except Exception as err:  # record it, run the others
                            self.failed[s.name] = str(err).removeprefix(f"stage {s.name} failed: ")
                            print(f"[{s.name}] FAILED: {self.failed[s.name]}", flush=True)
                            continue
                        s._write_record("done", seconds)
                        verb = "resumed" if action == "resume" else "ran"
                        print(f"[{s.name}] {verb} in {fmt_seconds(seconds)} ({why})", flush=True)
                        self.summary.append((s.name, "ran", seconds))
                        finished.add(s.name)
            except BaseException:
                stop.set()  # the worker threads terminate their processes; the pool waits for them
                raise
        return {k: v for k, v in self.failed.items() if k in names}

    def _begin(self, stage: Stage, announce: bool = True) -> tuple[str, str] | None:
        """Decide ``stage``: reused, say so and give None; else empty its folder, give ``(action, why)``."""
        action, why = self._decide(stage)
        if action == "reuse":
            print(f"[{stage.name}] reused ({why})", flush=True)
            self.summary.append((stage.name, "reused", 0.0))
            return None
        if action == "run" and stage.folder.exists():
            shutil.rmtree(stage.folder)  # nothing computed under another configuration survives
        if announce:
            print(f"[{stage.name}] {'resuming' if action == 'resume' else 'running'} ({why}); "
                  f"log: {stage.log_file}", flush=True)
        stage.folder.mkdir(parents=True, exist_ok=True)
        stage._write_record("running")
        return action, why

    def _execute(self, stage: Stage, progress: bool | None = None,
                 stop: threading.Event | None = None) -> float:
        """Run the stage's subprocess; its output goes to its log. Raises ``InputError`` if it fails.

        ``progress``: show the status line (default ``self.progress``); ``stop``: an event that, once
        set, terminates the process (how :meth:`run_graph` stops the stages running in its threads).
        """
        progress = self.progress if progress is None else progress
        cmd = [sys.executable, "-m", stage.module, *stage.args]
        stage.log_file.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(stage.log_file, "w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            # the parent-death signal goes with the thread that starts the child: run_graph's worker
            # threads wait for their stage's process, so it outlives none of them
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=stage.cwd,
                                    env={**os.environ, **(stage.env or {})},
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            try:
                while proc.poll() is None:
                    time.sleep(0.5)
                    if stop is not None and stop.is_set():
                        break
                    if progress:
                        self._status(stage, time.time() - t0)
            finally:  # killed or interrupted: never leave the stage's process running on its own
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if progress:
                    print("\r\033[K", end="", flush=True)
        if proc.returncode != 0:
            text = stage.log_file.read_text(errors="replace").splitlines()
            errors = [ln for ln in text if ln.startswith("error:")]
            msg = (errors[-1][len("error: "):] if errors
                   else f"exited with status {proc.returncode}; see {stage.log_file}")
            raise InputError(None, f"stage {stage.name} failed: {msg}")
        return time.time() - t0

    @staticmethod
    def _status(stage: Stage, elapsed: float) -> None:
        last = ""
        try:
            with open(stage.log_file, "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 4096))
                for line in fh.read().decode(errors="replace").replace("\r", "\n").splitlines():
                    m = PROGRESS.search(line.strip())
                    if m:
                        last = m.group(1)
        except OSError:
            pass
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = f"[{stage.name}] {fmt_seconds(elapsed)}" + (f" · {last}" if last else "")
        print("\r\033[K" + text[:width], end="", flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the pipeline's process dies, even by SIGKILL (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class FolderLock:
    """An exclusive lock on a run folder: a second pipeline into the same folder fails at once.

    ``holder`` names this program in the lock file, so the refused run's one-line error names the
    program and pid holding the folder; ``option`` is the setting that chose the folder.
    """

    def __init__(self, folder: Path, holder: str = "cosmoinfer-pipeline", option: str = "out_dir"):
        self.path = Path(folder) / ".pipeline.lock"
        self.holder, self.option = holder, option
        self.fh = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            pid, _, holder = self.fh.read().strip().partition(" ")
            self.fh.close()
            holder = holder or "cosmoinfer-pipeline"  # lock files of older versions hold the pid only
            what = (f"another {holder} (pid {pid or '?'}) is running in this folder; "
                    f"wait for it or choose another {self.option}")
            raise InputError(self.path.parent, what) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()} {self.holder}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        self.fh.close()


def terminate_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` so the running stage's process is stopped too."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
