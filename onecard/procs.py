"""Child processes the demo (and the tests) start: started, waited for, and always stopped.

Only processes started here are ever stopped, and only by their own pid.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")


class ChildError(RuntimeError):
    """A child process did not start, or said something we did not expect."""


class Child:
    """A started process whose output is read on a thread and kept (last 200 lines)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: deque[str] = deque(maxlen=200)
        self._new_line = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C at the terminal reaches the demo, which stops us
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`; raises if the child exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                lines = list(self.lines)
                for line in lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise ChildError(
                        f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildError(
                        f"{self.name} did not say {pattern!r} in {timeout:.0f} s: {self.tail()}"
                    )
                self._new_line.wait(min(left, 0.2))

    def tail(self, n: int = 8) -> str:
        return " | ".join(list(self.lines)[-n:]) or "(no output)"

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self._reader.join(timeout)
            self.proc.stdout.close()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pcscd_running() -> bool:
    """True when something answers on pcscd's socket."""
    if not PCSCD_SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(PCSCD_SOCKET))
        except OSError:
            return False
    return True


def start_pcscd(timeout: float = 10.0) -> Child:
    """Start `pcscd --foreground` and wait until its socket answers."""
    exe = "/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else "pcscd"
    try:
        child = Child("pcscd", [exe, "--foreground"])
    except FileNotFoundError as exc:
        raise ChildError(
            "pcscd is not installed: install it with `apt-get install pcscd vsmartcard-vpcd`"
        ) from exc
    deadline = time.monotonic() + timeout
    while not pcscd_running():
        if child.proc.poll() is not None:
            raise ChildError(
                f"pcscd could not be started ({child.tail()}); start it as root with "
                "`pcscd --foreground`"
            )
        if time.monotonic() > deadline:
            child.stop()
            raise ChildError("pcscd started but its socket did not answer in time")
        time.sleep(0.05)
    return child


def wait_for_http(url: str, timeout: float, child: Child | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child is not None and child.proc.poll() is not None:
            raise ChildError(f"{child.name} exited with {child.proc.returncode}: {child.tail()}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.05)
    raise ChildError(f"{url} did not answer in {timeout:.0f} s: {last}")
