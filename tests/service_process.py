"""`importer serve` as a real process, for tests/test_service.py and tests/test_submit.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from importer.local_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class Service:
    def __init__(self, tracking_uri: str, folder: Path, *args: str, host: str = "127.0.0.1",
                 token: str | None = None, port: int | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        scheme = "https" if "--ssl-certfile" in args else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.spool = folder / "spool"
        self.token = token
        self.args = ["--tracking-uri", tracking_uri, "--host", host, "--port", str(self.port),
                     "--spool", str(self.spool), "--state", str(folder / "ledger.db"), *args]
        self.log = folder / f"service-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env["PYTHONPATH"] = str(ROOT)
        if self.token:
            env["IMPORTER_SERVICE_TOKEN"] = self.token
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "importer", "serve", *self.args],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited ({self.process.returncode}): {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the service did not start: " + self.log.read_text())

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, verify=False, **kwargs)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_job(http: httpx.Client, job_id: str, states=("done", "failed"), seconds: float = 60) -> dict:
    """Poll the job until it is in one of `states` (the service is another process)."""
    deadline = time.monotonic() + seconds
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
