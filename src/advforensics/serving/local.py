"""`advforensics serve` as a child process on a free loopback port (benchmarks, tests, demos)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


class LocalServer:
    """Starts the server (`with LocalServer(...) as server: server.url`); stops it on exit."""

    def __init__(self, record: str | Path, keys: str | Path, log: str | Path, *extra: str) -> None:
        self.args = [sys.executable, "-m", "advforensics", "serve", "--record", str(record), "--keys", str(keys),
                     "--log", str(log), "--port", "0", *extra]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> LocalServer:
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nothing can block the server
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.process.stdout.readline()  # the server prints its URL once it listens
        if " on http://" not in line:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the server did not start: {line}{self.errors()[-2000:]}")
        self.url = line.split(" on ")[1].split()[0]
        return self

    def stop(self, kill: bool = False) -> int:
        """Terminate (or SIGKILL) the server; its exit code."""
        if self.process is None:
            return 0
        self.process.kill() if kill else self.process.terminate()
        code = self.process.wait(timeout=30)
        self.process.stdout.close()
        self.process = None
        return code

    def errors(self) -> str:
        """What the server wrote to stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalServer"]
