"""Run lanshare commands in forked children of one pre-imported Python process, and SIGKILL them.

A child is a real process running the real code, but the 1-2 s of imports on a loaded machine is
not paid for each run (and kills land in the work, not in the imports).  Used by the crash tests
(``tests/test_crash.py``, ``tests/test_prune.py``).

Two ways to pick the moment of a kill:

- after a delay (:meth:`Forker.kill_during`): anywhere, including in the middle of a system call;
- before the child's N-th filesystem change (:meth:`Forker.kill_before_change`): the child counts
  the changes it makes with a Python audit hook (``open`` for writing, ``os.remove``, ``os.rename``,
  ``os.link``, ``os.mkdir``, …) and sends itself SIGKILL just before the N-th one.  A traced run
  (:meth:`Forker.changes`) lists them all, so a test can aim one kill at every phase of a command.
  What a kill leaves on disk depends only on how many changes had been made, so kills aimed
  between changes reach every state a crash can leave, without depending on the machine's speed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

Job = dict[str, object]  # {"cli": argv} or {"open_index": url}; optional "kill_before" / "trace"
SOURCE_ROOT = Path(__file__).resolve().parent.parent

FORKER = r"""
import json, os, signal, sys
from lanshare.cli import main
from lanshare.index.db import open_index
import lanshare.pull, lanshare.prune, lanshare.index.sync, lanshare.commands.pull, lanshare.commands.prune
import lanshare.commands.commit, lanshare.commands.reindex, lanshare.ostree.commit_tree

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.remove", "os.rename", "os.link", "os.symlink", "os.mkdir", "os.rmdir", "os.truncate",
           "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.move"}


def count_changes(kill_before, trace):
    # Counts every filesystem change the child makes; SIGKILL just before change number kill_before.
    state = {"seen": 0, "on": True}

    def hook(event, args):
        if not state["on"]:
            return
        if event == "open":
            flags = args[2] if len(args) > 2 else None
            if not isinstance(flags, int) or not flags & WRITE_FLAGS:
                return
        elif event not in CHANGES:
            return
        state["seen"] += 1
        if trace is not None:
            path = args[0]
            trace.append([event, os.fsdecode(path) if isinstance(path, (str, bytes)) else repr(path)])
        if state["seen"] == kill_before:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    return state


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        trace = [] if job.get("trace") else None
        state = {}
        code = 1
        try:
            if job.get("kill_before") or trace is not None:
                state = count_changes(job.get("kill_before"), trace)
            if "open_index" in job:
                open_index(job["open_index"]).dispose()
                code = 0
            else:
                code = main(job["cli"])
        finally:
            if trace is not None:
                state["on"] = False  # the trace file itself is no change of the command's
                with open(job["trace"], "w") as out:
                    json.dump(trace, out)
            os._exit(code)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", status, flush=True)
"""


class Forker:
    """Runs commands in forked children of one pre-imported Python process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKER],
            cwd=SOURCE_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self, word: str) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == word, line
        return int(line[1])

    def start(self, job: Job) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._line("pid")

    def finished(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        return bool(ready)

    def measure(self, job: Job) -> float:
        """Seconds one uninterrupted run takes (it must succeed)."""
        started = time.monotonic()
        self.start(job)
        assert self._line("exit") == 0, job
        return time.monotonic() - started

    def kill_during(self, job: Job, delay: float) -> bool:
        """Start ``job`` and SIGKILL it after ``delay`` s; True if it was still running then."""
        pid = self.start(job)
        running = not self.finished(delay)
        if running:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now (the forker reaps it at once)
                running = False
        self._line("exit")
        return running

    def changes(self, job: Job, trace: Path) -> list[tuple[str, str]]:
        """Run ``job`` to the end (it must succeed): every filesystem change it made, in order,
        as (audit event, path)."""
        assert self.measure({**job, "trace": str(trace)}) >= 0
        return [(event, path) for event, path in json.loads(trace.read_text())]

    def kill_before_change(self, job: Job, change: int) -> bool:
        """Run ``job``, SIGKILLed just before its ``change``-th filesystem change (from 1);
        True if it was killed, False if it made fewer changes and finished."""
        self.start({**job, "kill_before": change})
        status = self._line("exit")
        return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()
