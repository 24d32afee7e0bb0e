"""`importer submit`: any input importer reads, turned into manifests (sinks/manifest.py) and
posted to an `importer serve` service as multipart, one manifest per run and its children.
Needs only httpx."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import orjson

from .. import pipeline
from ..errors import ConnectionFailed, ImporterError, InputError, Problem, ValidationError
from ..sinks.manifest import manifest_document, manifests

POLL_EVERY = 0.5
GIVE_UP_AFTER = 24 * 3600.0  # a job the service keeps queued (its MLflow server is down) this long


@dataclass
class Submitted:
    service: str
    runs: list[dict] = field(default_factory=list)  # the service's RunOut, per run
    jobs: list[dict] = field(default_factory=list)  # id, state, error
    notes: list[str] = field(default_factory=list)
    unreachable: bool = False

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.runs if r["action"] in ("failed", "changed")] + \
               [j for j in self.jobs if j["state"] == "failed" and not j.get("runs")]

    def to_dict(self) -> dict:
        return {"service": self.service, "runs": self.runs, "jobs": self.jobs, "notes": self.notes}

    def text(self) -> str:
        count = lambda action: sum(r["action"] == action for r in self.runs)
        lines = [f"Submitted to {self.service}: {count('created')} created, {count('appended')} appended, "
                 f"{count('unchanged')} unchanged, {len(self.failed)} failed"]
        for r in self.runs:
            lines.append(f"  {r['action']}: {r['experiment']} / {r['import_key']}: run {r['run_id']}"
                         + (f" {r['url']}" if r.get("url") else "") + (f": {r['error']}" if r.get("error") else ""))
        for j in self.jobs:
            if j.get("error"):
                lines.append(f"  FAILED job {j['id']}: {j['error']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def submit(paths: list[str], service: str, token: Optional[str], *, experiment: Optional[str] = None,
           fmt: Optional[str] = None) -> Submitted:
    inputs = pipeline.read_inputs(paths, experiment, fmt=fmt)
    out = Submitted(service=service.rstrip("/"), notes=list(inputs.notes))
    if inputs.models or inputs.logged_models:
        out.notes.append("registered and logged models are not sent: a manifest has no place for them")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=out.service, headers=headers,
                      timeout=httpx.Timeout(600, connect=10)) as http:
        for group in manifests(inputs.records):
            for rec in group:
                if rec.load is not None:  # a bundle's run: its points and files, now
                    asyncio.run(rec.load())
            doc, parts, notes = manifest_document(group)
            out.notes += notes
            job = _post(http, doc, parts)
            for rec in group:  # sent: let go of the points
                rec.metrics = {}
            out.jobs.append({k: job.get(k) for k in ("id", "state", "error")})
            out.runs += job.get("runs", [])
    return out


def _post(http: httpx.Client, doc: dict, parts: list) -> dict:
    files = [("manifest", ("manifest.json", orjson.dumps(doc), "application/json"))]
    opened = []
    try:
        for name, source in parts:
            body = source if isinstance(source, bytes) else open(source, "rb")
            if not isinstance(source, bytes):
                opened.append(body)
            files.append((name, (Path(name).name, body, "application/octet-stream")))
        resp = _send(http, "POST", "/v1/runs", files=files)
    finally:
        for f in opened:
            f.close()
    job = resp.json()
    deadline = time.monotonic() + GIVE_UP_AFTER
    while job["state"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise ImporterError(f"job {job['id']} is still {job['state']} at {http.base_url}")
        time.sleep(POLL_EVERY)  # the service is another process: polling is how to learn
        job = _send(http, "GET", f"/v1/jobs/{job['id']}").json()
    return job


def _send(http: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    """One request; the service's refusals as importer's errors (exit codes as `import`)."""
    try:
        resp = http.request(method, path, **kwargs)
    except httpx.TransportError as e:
        raise ConnectionFailed(f"cannot reach the service at {http.base_url} ({type(e).__name__}); is "
                               "it running, and is the URL right?") from None
    if resp.status_code == 401:
        raise ConnectionFailed(f"the service at {http.base_url} refused the token (HTTP 401); pass "
                               "--token-file or set IMPORTER_SERVICE_TOKEN")
    if resp.status_code in (400, 413, 415, 422):
        body = _json(resp)
        problems = [Problem("manifest", p["location"], p["message"]) for p in body.get("problems", [])]
        if problems:
            raise ValidationError(problems)
        raise InputError(f"the service refused the manifest (HTTP {resp.status_code}): "
                         f"{body.get('detail', resp.text[:200])}")
    if resp.status_code >= 400:
        raise ImporterError(f"the service answered HTTP {resp.status_code}: "
                            f"{_json(resp).get('detail', resp.text[:200])}")
    return resp


def _json(resp: httpx.Response) -> dict:
    try:
        body = resp.json()
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
