"""Start a local `mlflow server` (SQLite store, artifacts proxied to a folder) for the demo, the tests
and the benchmark. Needs the `server` extra (`pip install importer[server]`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx

from .errors import ConnectionFailed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """An `mlflow server` process on loopback whose data lives in `folder`.

    `flavor="gunicorn"` runs Flask under gunicorn's sync workers without the background job runner:
    the reference measured no keep-alive stall and higher throughput that way. `flavor="default"`
    is the server as `mlflow server` starts it (uvicorn), which is what most users run.
    """

    def __init__(self, folder: Path, port: Optional[int] = None, flavor: str = "gunicorn",
                 workers: int = 2, admin_password: Optional[str] = None):
        self.folder = Path(folder).resolve()
        self.admin_password = admin_password  # set: MLflow's basic-auth app, user `admin`
        self.port = port or free_port()
        self.flavor = flavor
        self.workers = workers
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
        if mlflow is None:
            raise ConnectionFailed("the `mlflow` command is not installed; "
                                   "install it with: pip install 'importer[server]'")
        cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"),
               "--workers", str(self.workers)]
        if self.flavor == "gunicorn":
            cmd += ["--gunicorn-opts", "--timeout 120"]
        if self.admin_password:
            cmd += ["--app-name", "basic-auth"]
        return cmd

    def start(self, timeout: float = 180.0) -> "LocalServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.flavor == "gunicorn":
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.admin_password:
            ini = self.folder / "basic_auth.ini"
            ini.write_text("[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = sqlite:///{self.folder / 'auth.db'}\nadmin_username = admin\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.admin_password
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", os.urandom(16).hex())  # CSRF key
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                raise ConnectionFailed(f"mlflow server exited with code {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ConnectionFailed(f"mlflow server did not answer on {self.url} within {timeout:.0f} s; "
                               f"see {self.folder / 'server.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
