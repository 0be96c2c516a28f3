"""Real local servers for tests, always stopped: `mlflow server` and an HTTP file server."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine_helpers import free_port


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts under `root`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.root / "server_artifacts"  # --artifacts-destination
        self.log = self.root / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'server.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout: float = 180) -> MlflowServer:
        cwd = self.root / "server_cwd"  # nothing may land here: artifacts go to self.artifacts
        cwd.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=cwd, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                # a store query, not /health: the first one also waits for the database
                query = f"{self.url}/api/2.0/mlflow/experiments/search?max_results=1"
                with urllib.request.urlopen(query, timeout=30) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server did not answer in {timeout} s: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (its own process group, started by `start`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)


@contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(root).start()
    try:
        yield server
    finally:
        server.stop()


class _ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; files named in `cut` send their full Content-Length but the
    connection is closed after `cut_after` bytes (a download dying mid-shard), after
    `stall_s` seconds of silence (a hung server) when that is set."""

    cut: frozenset[str] = frozenset()
    cut_after = 4096
    stall_s = 0.0

    def copyfile(self, source, outputfile) -> None:
        if Path(self.path).name not in self.cut:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.cut_after))
        outputfile.flush()
        time.sleep(self.stall_s)
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@contextmanager
def http_file_server(
    folder: Path, cut: tuple[str, ...] = (), stall_s: float = 0.0
) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 serving `folder`; yields its base URL."""
    handler = type("Handler", (_ShardHandler,), {"cut": frozenset(cut), "stall_s": stall_s})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
