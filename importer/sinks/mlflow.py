"""Write RunRecords to an MLflow tracking server, idempotently and resumably.

For each run:

1. find it: the ledger's run id (checked on the server), else a search by the import-key tag;
2. check params against what is stored (the conflict policy) before writing anything;
3. create it if missing, with start time, name, user and every tag in the one `runs/create` call,
   so a run interrupted right after creation is found again by its key; then settle it (see
   `MlflowSink.settle`): another importer may have created the same run at the same moment, and
   all agree on one before anything is written to it;
4. log params and changed tags, then only the metric points the server does not have, in batches
   filled to the server's limits, several in flight; progress goes to the ledger as batches land.
   A point the source changed after it was sent (its step and time on the server with another
   value) is reported, and sent again with its new value only on request (`on_metric_change`);
5. upload artifacts through the proxy, while the points go, and verify each by its SHA-256;
6. set the original end time and status last.

Metric request bodies are built by Arrow compute from the columns, with no Python object per point.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConflictError, ConnectionFailed, ImporterError, RetryableError, ServerError
from ..files import sha256_file
from ..ledger import COMPARE, Ledger
from ..mlflow_api import (MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, NOT_FOUND, MlflowApi, pairs,
                          tag_filter)
from ..model import (EXPERIMENT_KIND_TAG, IMPORT_KEY_TAG, PENDING_TAG, SOURCE_RUN_ID_TAG, SPECIAL_VALUES,
                     RunRecord, is_pending, oldest_run, spill_long_params, stored_value, with_import_key)

EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}  # classic runs view in the UI
CONFLICT_POLICIES = ("error", "keep", "rename")
METRIC_CHANGE_POLICIES = ("leave", "append")  # a point changed at the source: report it, or also send it
_CHUNK = 1 << 20
# Settling a new run (MlflowSink.settle): how often to look again while another importer decides,
# when a pending copy from another host counts as abandoned, and how often a run is begun again
# after giving way before the import of it fails.
SETTLE_POLL = (0.15, 0.45)  # seconds, drawn at random
ABANDONED_AFTER_MS = 120_000
RESTARTS = 5


@dataclass
class Outcome:
    """What happened to one run."""

    origin: str
    experiment: str
    import_key: str
    action: str = "pending"  # created | appended | unchanged | changed | failed (dry run: would-create, ...)
    run_id: Optional[str] = None
    experiment_id: Optional[str] = None
    points: int = 0
    params: int = 0
    artifacts: int = 0
    notes: list[str] = field(default_factory=list)
    # metric -> source points whose step and time the server holds with other values: sent again
    # (on_metric_change `append`), or left as stored (action `changed`: exit code 1)
    changed: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None
    unreachable: bool = False  # failed because the server could not be reached (exit code 3)
    retryable: bool = False  # failed on 429/5xx answers that outlasted the retries: try again later

    def fail(self, e: Exception) -> None:
        """The run failed with `e`: our own errors by their message, any other with its type."""
        known = isinstance(e, (ImporterError, OSError))
        self.action, self.error = "failed", str(e) if known else f"{type(e).__name__}: {e}"
        self.unreachable = isinstance(e, ConnectionFailed)
        self.retryable = isinstance(e, RetryableError)


def renamed_param(key: str, value: str) -> str:
    """Where `--on-param-conflict rename` logs a new value: `<key>.conflict-<first 8 hex digits of
    the value's SHA-256>`, so a rerun with the same value lands on the same key."""
    return f"{key}.conflict-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def metric_entries(key: str, table: pa.Table, start_time: int) -> pa.Array:
    """One JSON object string per point, built column-wise by Arrow."""
    values = table.column("value").combine_chunks()
    text = values.cast(pa.string())
    text = pc.if_else(pc.equal(text, "-0"), pa.scalar("-0.0"), text)  # "-0" would be read as integer 0
    for word, special in SPECIAL_VALUES.items():  # JSON has no NaN/Infinity: the server takes words
        hit = pc.is_nan(values) if math.isnan(special) else pc.equal(values, special)
        text = pc.if_else(hit, pa.scalar(f'"{word}"'), text)
    stamps = pc.fill_null(table.column("timestamp").combine_chunks(), start_time).cast(pa.string())
    steps = table.column("step").combine_chunks().cast(pa.string())
    head = '{"key":"' + key + '","value":'  # keys were validated: no character needs escaping
    return pc.binary_join_element_wise(head, text, ',"timestamp":', stamps, ',"step":', steps, "}", "")


def batch_body(run_id: str, parts: list[pa.Array]) -> bytes:
    entries = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(entries)], pa.int32()), entries), ",")
    return f'{{"run_id":"{run_id}","metrics":[{joined[0].as_py()}]}}'.encode()


class SeriesDigest:
    """A SHA-256 of a series' points in order (step, timestamp or its absence, value), the same
    however the series is cut into tables. The ledger keeps it with its count of points sent, so
    a source that changed one of them is noticed without reading the server. Bits, not numbers:
    a NaN with another payload differs, and costs only a comparison with the server."""

    def __init__(self) -> None:
        self._columns = [hashlib.sha256() for _ in range(3)]

    def update(self, table: pa.Table) -> SeriesDigest:
        for batch in table.to_batches():
            if not batch.num_rows:
                continue
            steps, stamps, values = (_data(batch.column(c)) for c in ("step", "timestamp", "value"))
            nulls = batch.column("timestamp").null_count  # what lies under a null is undefined
            if nulls == batch.num_rows:  # all derived (a log without times): no need to fill
                stamps = _NO_TIMESTAMP.to_bytes(8, "little", signed=True) * nulls
            elif nulls:
                stamps = _data(pc.fill_null(batch.column("timestamp"), _NO_TIMESTAMP))
            for h, data in zip(self._columns, (steps, stamps, values)):
                h.update(data)
        return self

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(h.digest() for h in self._columns)).hexdigest()


_NO_TIMESTAMP = -(1 << 63)  # a point without one (derived from the run's start time), in a digest


def _data(col: pa.Array) -> memoryview:
    """The values of a 64-bit column without nulls, as bytes, without a copy."""
    return memoryview(col.buffers()[1])[col.offset * 8:(col.offset + len(col)) * 8]


class MlflowSink:
    def __init__(self, api: MlflowApi, ledger: Ledger, *, on_param_conflict: str = "error",
                 on_metric_change: str = "leave", dry_run: bool = False, progress=None,
                 prepared: Optional[dict[str, bool]] = None):
        if on_param_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_param_conflict must be one of {CONFLICT_POLICIES}")
        if on_metric_change not in METRIC_CHANGE_POLICIES:
            raise ValueError(f"on_metric_change must be one of {METRIC_CHANGE_POLICIES}")
        self.api = api
        self.ledger = ledger
        self.server = api.url
        self.policy = on_param_conflict
        self.on_metric_change = on_metric_change
        self.dry_run = dry_run
        self.progress = progress  # called with the number of points that just landed
        self._experiments: dict[str, asyncio.Task] = {}
        # Experiments this move has just written with their tags (experiments.prepare), as name ->
        # created just now. Their tags are not set again; one created just now is empty, so no
        # run is looked for in it: a search per run costs the server more the more runs it holds.
        self._prepared = prepared or {}

    # -- experiments ---------------------------------------------------------------------------

    async def experiment(self, name: str, tags: Optional[dict[str, str]] = None) -> tuple[Optional[str], bool]:
        """(id, created by this import); one lookup per name however many runs ask at once. `tags`
        (an experiment moved from another store: its tags and description) are set the first time,
        unless experiments.prepare did."""
        if name not in self._experiments:
            if self.dry_run:
                async def lookup() -> tuple[Optional[str], bool]:
                    found = await self.api.experiment_by_name(name)
                    return (found["experiment_id"], False) if found else (None, True)
                coro = lookup()
            else:
                async def get_or_create() -> tuple[str, bool]:
                    if name in self._prepared or self.ledger.knows_experiment(self.server, name):
                        # There, most likely: asked first, as a create beside the lookup would be
                        # refused (and take an id from the sequence, on some stores).
                        found = await self.api.experiment_by_name(name)
                        exp_id, new = await self.api.get_or_create_experiment(name, EXPERIMENT_TAGS, found)
                    else:
                        exp_id, new = await self.api.get_or_create_experiment(name, EXPERIMENT_TAGS)
                    if name not in self._prepared:
                        for k, v in (tags or {}).items():
                            await self.api.set_experiment_tag(exp_id, k, v)
                    return exp_id, new or self._prepared.get(name, False)
                coro = get_or_create()
            self._experiments[name] = asyncio.ensure_future(coro)
        return await self._experiments[name]

    # -- one run -------------------------------------------------------------------------------

    async def write(self, rec: RunRecord, parent_run_id: Optional[str], out: Outcome,
                    created: asyncio.Future) -> Outcome:
        """Write one run. `created` gets the run id as soon as the run exists (children wait on
        it). Errors end up in `out`; they never escape."""
        try:
            await self._write(rec, parent_run_id, out, created)
        except Exception as e:  # one run's failure, whatever it is, must not stop the others
            out.fail(e)
            if not self.dry_run:
                self.ledger.record_error(self.server, rec.experiment, rec.import_key, rec.origin, out.error)
        if not created.done():
            created.set_result(out.run_id)
        return out

    async def _write(self, rec: RunRecord, parent_run_id: Optional[str], out: Outcome,
                     created: asyncio.Future) -> None:
        may_stream = True
        for attempt in range(RESTARTS):
            found = await self._locate(rec, out, look=attempt > 0)
            if found is None:  # written completely in this very state, by the ledger's word
                return
            found.may_stream = may_stream
            plan = await self._plan(rec, parent_run_id, found, out, created)
            if self.dry_run:
                return
            try:
                return await self._send(rec, found, plan, out, created)
            except _GaveWay:  # the run created went to the trash unwritten: write into the winner
                continue
            except _PrefixChanged:  # a streamed series changed where it was sent: compare it
                may_stream = False
        raise ServerError(f"importers writing run {rec.import_key!r} at once did not agree on one run "
                          f"after {RESTARTS} attempts; run the import again", url=self.server)

    async def _locate(self, rec: RunRecord, out: Outcome, look: bool = False) -> Optional[Located]:
        """The record's run on the server, if any: the ledger's (checked there), else the one holding
        its import key. None when the ledger says it is complete in this very state (asking nothing).
        `look`: search even in an experiment created just now (a run was begun there already)."""
        exp_id, exp_new = await self.experiment(rec.experiment, rec.experiment_tags)
        out.experiment_id = exp_id
        fingerprint = f"{rec.fingerprint()}:{self.policy}"  # another policy may want other writes
        # An experiment this import created held none of the ledger's runs: the server was wiped
        # or replaced under the same URL (its new experiment may even get the old id), or the
        # experiment was deleted for good. Whatever the ledger says of it is about another store.
        row = self.ledger.run(self.server, rec.experiment, rec.import_key) if exp_id and not exp_new else None
        trust = ledger_trust(row, fingerprint=fingerprint, experiment_id=exp_id,
                             moved=rec.source_run_id is not None)
        if trust.unchanged:
            out.action, out.run_id = "unchanged", trust.run_id
            return None
        # A run deleted at the source is written, then deleted; so a deleted run on the
        # destination is the one to go on with.
        lifecycles = ("active", "deleted") if rec.lifecycle == "deleted" else ("active",)
        run: Optional[dict] = None
        if trust.run_id is not None:
            run = await self.api.get_run(trust.run_id)
            if (run is None or run["info"].get("lifecycle_stage") not in lifecycles
                    or run["info"]["experiment_id"] != exp_id):
                if not self.dry_run:
                    self.ledger.forget_run(self.server, rec.experiment, rec.import_key, trust.run_id)
                trust, run = LedgerTrust(), None  # what it knew was about a run that is gone
        if run is None and exp_id and (look or not exp_new):
            run = await self.find(exp_id, rec.import_key, include_deleted=rec.lifecycle == "deleted")
        if run is not None and run["info"].get("lifecycle_stage") == "deleted" and not self.dry_run:
            await self.api.restore_run(run["info"]["run_id"])  # written to, then deleted again
        progress = self.ledger.progress(run["info"]["run_id"]) if run and trust.counts else {}
        return Located(exp_id, fingerprint, run, trust, {k: n for k, (n, _) in progress.items()},
                       {k: d for k, (_, d) in progress.items()})

    async def _plan(self, rec: RunRecord, parent_run_id: Optional[str], found: Located, out: Outcome,
                    created: asyncio.Future) -> WritePlan:
        """What the run lacks, from the source compared with the server's copy. Nothing is written
        to the server; a param conflict (policy `error`) is raised here, before anything is."""
        run = found.run
        stream = await self._read_source(rec, found)
        tags, own_id_tags = self._tags_to_send(rec, parent_run_id, run)
        params = self._resolve_params(rec, pairs(run["data"].get("params")) if run else {}, out)
        out.params = len(params)
        if run is None:
            out.action = "would-create" if self.dry_run else "created"
            start = self._start_time(rec)
        else:
            out.action = "would-append" if self.dry_run else "appended"
            start = int(run["info"]["start_time"])
            self._claim(rec, found, run["info"]["run_id"], out, created)
        pieces, progress, out.points, changed = await self._points_to_send(rec, found, start, stream)
        out.changed = {k: t.num_rows for k, t in changed.items()}
        artifacts = rec.artifacts if run is None else await self._artifacts_to_send(run, rec)
        out.artifacts = len(artifacts)
        set_status = _status_differs(run["info"] if run else _CREATED_RUN_INFO, rec)
        has_inputs = run is not None and run.get("inputs", {}).get("dataset_inputs")
        inputs = rec.inputs if rec.inputs and not has_inputs else []
        lifecycle_changed = run is not None and run["info"].get("lifecycle_stage") != rec.lifecycle
        only_points = not (params or tags or inputs or artifacts or set_status or lifecycle_changed)
        if out.action == "would-append" and only_points and not out.points:
            out.action = "unchanged"
        if out.changed and self.on_metric_change == "leave":
            out.action = "changed"
        elif out.changed:
            out.notes += [f"{k}: {n:,} point{'s' * (n != 1)} changed at the source, "
                          f"{'would be ' if self.dry_run else ''}logged again with its new value "
                          "(the stored one stays)" for k, n in out.changed.items()]
        return WritePlan(create=run is None, start_time=start, params=params, tags=tags,
                         own_id_tags=own_id_tags, inputs=inputs, pieces=pieces, progress=progress,
                         artifacts=artifacts, set_status=set_status, delete=rec.lifecycle == "deleted",
                         only_points=only_points)

    async def _read_source(self, rec: RunRecord, found: Located) -> bool:
        """Load the record's points and artifacts, unless they are to be streamed: then only its
        artifacts (a source checks itself there, before the run is created). Returns whether streamed."""
        # A run read on demand (a server, a bundle) is streamed straight from its source, page by
        # page, when no comparison with the server's copy is needed: memory stays flat.
        stream = (getattr(rec.load, "pages", None) is not None and not self.dry_run and _start_known(rec)
                  and found.may_stream and (found.run is None or found.trust.streamable(
                      found.progress, _series_lengths(rec), found.digests)))
        if stream:
            rec.artifacts = await rec.load.artifacts()
        elif rec.load is not None:
            await rec.load()
        spill_long_params(rec)
        return stream

    def _tags_to_send(self, rec: RunRecord, parent_run_id: Optional[str],
                      run: Optional[dict]) -> tuple[dict[str, str], dict[str, str]]:
        """(tags the run lacks, tags naming the source run that a new run gets once it has an id).
        A new run gets all its other tags with runs/create."""
        tags = self._tags(rec, parent_run_id)
        # Tags holding the source run's own id (e.g. mlflow.log-model.history) get the new id,
        # which exists only once the run does.
        own_id_tags = {k: v for k, v in tags.items()
                       if rec.source_run_id and rec.source_run_id in v and not k.startswith("importer.")}
        for k in own_id_tags:
            del tags[k]
        if run is None:
            return tags, own_id_tags
        stored = pairs(run["data"].get("tags"))
        tags.update({k: v.replace(rec.source_run_id, run["info"]["run_id"]) for k, v in own_id_tags.items()})
        return {k: v for k, v in tags.items() if stored.get(k) != v}, {}

    async def _points_to_send(self, rec: RunRecord, found: Located, start_time: int, stream: bool
                              ) -> tuple[Any, dict[str, tuple[int, Optional[str]]], int, dict[str, pa.Table]]:
        """(pieces of (metric, points, source index of the first one or None), each series' length
        and digest to record once they all landed, points to send: 0 when streamed, unknown;
        points changed at the source, per metric). Missing are all points of a new run; else those
        the ledger does not count, where it is trusted; else those the server does not hold.
        Changed points are among the pieces with on_metric_change `append`."""
        if stream:
            pieces = _unsent(_read_ahead(rec.load.pages()), found)
            return pieces, pieces.progress, 0, {}  # progress: filled as the stream is read
        if found.run is None:
            missing = {k: (t, 0) for k, t in rec.metrics.items() if t.num_rows}
            changed: dict[str, pa.Table] = {}
            progress = {k: (t.num_rows, SeriesDigest().update(t).hexdigest()) for k, t in rec.metrics.items()}
        else:
            missing, changed, progress = await self._missing_points(rec, found, start_time)
        for key, table in changed.items():
            if self.on_metric_change == "append":
                also = missing.get(key, (table.slice(0, 0), None))[0]
                missing[key] = (pa.concat_tables([also, table]), None)
            else:
                progress[key] = (progress[key][0], COMPARE)
        pieces = _aiter((k, t, base) for k, (t, base) in missing.items())
        return pieces, progress, sum(t.num_rows for t, _ in missing.values()), changed

    def _claim(self, rec: RunRecord, found: Located, run_id: str, out: Outcome,
               created: asyncio.Future) -> None:
        """The record's run is settled: its children may go on, and the ledger learns of it, and
        in which state of the record the progress it saves from now on is made (its fingerprint),
        so that a rerun in that state after a crash believes the counts. Not so when this import
        compares with the server: the counts left by a crash would then say nothing of what
        landed (no fingerprint: a rerun compares again)."""
        out.run_id = run_id
        if not created.done():
            created.set_result(run_id)
        if not self.dry_run and not found.trust.same_state:
            counted = found.run is None or found.trust.counts
            self.ledger.save_run(self.server, rec.experiment, rec.import_key, run_id=run_id,
                                 experiment_id=found.experiment_id, origin=rec.origin,
                                 fingerprint=found.fingerprint if counted else "")

    async def _send(self, rec: RunRecord, found: Located, plan: WritePlan, out: Outcome,
                    created: asyncio.Future) -> None:
        """Write the plan, in an order that survives a crash anywhere: the run is created with its
        import key (found again by it), params before any metric, the end time, status and
        lifecycle last, and only then is the ledger's row complete."""
        run, tags = found.run, plan.tags
        params_sent = False
        if plan.create:
            run = await self.create(found.experiment_id, rec, plan.tags, plan.start_time)
            run_id = run["info"]["run_id"]
            tags = {k: v.replace(rec.source_run_id, run_id) for k, v in plan.own_id_tags.items()}

            async def params_meanwhile() -> None:
                nonlocal params_sent
                await self._log_params_tags(run_id, tags=tags, params=plan.params)
                params_sent = True

            # Settled before anything else is written to it, and before children or the ledger
            # learn of it: a run that gives way holds no point and is named nowhere. Its params
            # and tags may go with the settling request (one round trip less on a far server):
            # they are the same whoever takes the run over.
            winner = await self.settle(found.experiment_id, rec.import_key,
                                       include_deleted=rec.lifecycle == "deleted", mine=run,
                                       meanwhile=params_meanwhile)
            if winner is None or winner["info"]["run_id"] != run_id:
                raise _GaveWay()
            self._claim(rec, found, run_id, out, created)
        run_id = run["info"]["run_id"]
        if not params_sent:
            await self._log_params_tags(run_id, plan.params, tags)
        if plan.inputs:
            await self.api.log_inputs(run_id, plan.inputs)
        # Artifacts go up while the points do: each is an upload and a download one after the
        # other, which on a far server would otherwise add their round trips to the run's end.
        out.points, _ = await _together(self._send_metrics(run_id, plan.pieces, plan.start_time),
                                        self._upload_all(run, plan.artifacts))
        self.ledger.save_progress(run_id, {k: n for k, (n, _) in plan.progress.items()},
                                  {k: d for k, (_, d) in plan.progress.items()})
        if out.action == "appended" and plan.only_points and not out.points:
            out.action = "unchanged"
        if plan.set_status:
            await self.api.update_run(run_id, rec.status, rec.end_time)
        if plan.delete:
            await self.api.delete_run(run_id)
        # Points left changed: not complete, so the next import compares again and says so again.
        self.ledger.save_run(self.server, rec.experiment, rec.import_key, run_id=run_id,
                             experiment_id=found.experiment_id, origin=rec.origin,
                             fingerprint=found.fingerprint, complete=out.action != "changed")

    async def find(self, exp_id: str, key: str, include_deleted: bool = False) -> Optional[dict]:
        """The run holding `key` in its import-key tag that every importer writes to (active, or
        also deleted), waiting while other importers settle a new one; None when there is none.
        A dry run only looks."""
        if self.dry_run:
            settled = [r for r in await self._copies(exp_id, key, include_deleted) if not is_pending(r)]
            return oldest_run(settled) if settled else None
        return await self.settle(exp_id, key, include_deleted=include_deleted)

    async def _copies(self, exp_id: str, key: str, include_deleted: bool) -> list[dict]:
        """Every run holding `key` in its import-key tag, settled or pending."""
        runs = [r async for r in self.api.search_runs([exp_id], tag_filter(IMPORT_KEY_TAG, key),
                                                      include_deleted=include_deleted)]
        return [r for r in runs if any(t["key"] == IMPORT_KEY_TAG and t["value"] == key
                                       for t in r["data"].get("tags", []))]

    async def settle(self, exp_id: str, key: str, *, include_deleted: bool = False,
                     mine: Optional[dict] = None, meanwhile=None) -> Optional[dict]:
        """The run of `key` all importers agree on, or None when there is none and nobody is
        making one. `mine`: a run this importer has just created, still pending (it carries
        PENDING_TAG); it is returned if it won, and deleted (in the trash, unwritten) if not.
        `meanwhile`: writes to `mine` that any importer could make alike (its params), made
        while it is being settled, and only if it wins at first sight.

        A new run is settled by its maker when a search made after its creation shows no other
        copy of the key; the maker then deletes its pending tag. A maker that sees a settled copy
        gives way to it; among pending copies the first by `oldest_run` stays and waits while the
        others give way. Settled copies are never deleted by this, so the first settled one stays.

        Why two makers A and B cannot both settle: each searched after its own create, and both
        copies stay active until settled. If A's search did not show b, b was created after that
        search, so after A's create, and B's later search shows a. So at least one of the two saw
        the other and could not settle while that copy was pending: it waited or gave way. The
        server's SQL store shows a committed create to the next search (no lag to allow for).

        A pending copy whose maker is gone (killed between create and settle: its process is gone,
        same host, or it is older than ABANDONED_AFTER_MS) would hold the others back: whoever sees
        it takes it over and settles it (nothing was written to it), giving way its own."""
        mine_id = mine["info"]["run_id"] if mine else None
        deadline = time.monotonic() + ABANDONED_AFTER_MS / 1000 + 60
        while time.monotonic() < deadline:
            runs = await self._copies(exp_id, key, include_deleted)
            settled = [r for r in runs if not is_pending(r)]
            if settled:
                winner = oldest_run(settled)
                if mine_id is not None and winner["info"]["run_id"] != mine_id:  # (another may
                    await self._give_way(mine_id)  # have taken mine over, thinking it abandoned)
                return winner
            pending = {r["info"]["run_id"]: r for r in runs if r["info"].get("lifecycle_stage") == "active"}
            left = [r for run_id, r in pending.items() if run_id != mine_id and _abandoned(_pending_mark(r))]
            if left:
                # Copies whose makers are gone (killed between create and settle) hold nothing: the
                # first of them is taken over, by every importer that sees it, so a rerun after a
                # kill leaves no copy in the trash; any others give way to it.
                first = oldest_run(left)
                for run in left:
                    if run is not first:
                        await self._give_way(run["info"]["run_id"])
                if await self._settle_mine(first["info"]["run_id"]):
                    if mine_id is not None:
                        await self._give_way(mine_id)
                    return first
                continue  # it went meanwhile: look again
            if mine_id is not None and mine_id not in pending:
                return None  # deleted as abandoned (this process stalled for minutes): begin again
            if len(pending) == (mine_id is not None):  # nobody else is deciding
                if mine_id is None or not await self._settle_mine(mine_id, meanwhile):
                    return None
                return mine
            if mine_id is not None and oldest_run(list(pending.values()))["info"]["run_id"] != mine_id:
                await self._give_way(mine_id)  # the first pending copy stays: wait for it
                mine_id = None
            await asyncio.sleep(random.uniform(*SETTLE_POLL))
        raise ServerError(f"run {key!r}: other importers' copies stayed pending for "
                          f"{ABANDONED_AFTER_MS // 1000 + 60} s; run the import again", url=self.server)

    async def _settle_mine(self, run_id: str, meanwhile=None) -> bool:
        """Take away a run's pending tag, and make the writes `meanwhile` at the same time; False
        if the run was deleted meanwhile (as abandoned), whatever those writes met."""
        if meanwhile is None:
            return await self._untag_pending(run_id)
        settled, written = await asyncio.gather(self._untag_pending(run_id), meanwhile(),
                                                return_exceptions=True)
        for result in (settled, written if settled is True else None):
            if isinstance(result, BaseException):
                raise result
        return settled

    async def _untag_pending(self, run_id: str) -> bool:
        try:
            await self.api.delete_tag(run_id, PENDING_TAG)
        except ServerError as e:
            if e.error_code in NOT_FOUND:  # an earlier attempt took it away and its answer was lost
                return True
            if e.status == 400:  # "must be in the 'active' state"
                return False
            raise
        return True

    async def _give_way(self, run_id: str) -> None:
        """Delete a pending run: this importer's own that lost, or an abandoned one. Nothing was
        written to it; it stays in the trash with its pending tag, so it is never taken again."""
        try:
            await self.api.delete_run(run_id)
        except ServerError as e:
            if e.error_code not in NOT_FOUND:
                raise

    async def create(self, exp_id: str, rec: RunRecord, tags: dict[str, str], start: int) -> dict:
        """A new run, pending (see `settle`)."""
        mark = _new_pending_mark()
        body: dict[str, Any] = {"experiment_id": exp_id, "start_time": start,
                                "tags": [{"key": k, "value": v} for k, v in {**tags, PENDING_TAG: mark}.items()]}
        if rec.name is not None:
            body["run_name"] = rec.name
        if rec.user is not None:
            body["user_id"] = rec.user

        async def made_unheard() -> Optional[dict]:  # this very create, whose answer was lost
            runs = await self._copies(exp_id, rec.import_key, include_deleted=False)
            return next((r for r in runs if _pending_mark(r) == mark), None)

        return await self.api.create_once("runs/create", body, "run", made_unheard)

    # -- pieces --------------------------------------------------------------------------------

    @staticmethod
    def _tags(rec: RunRecord, parent_run_id: Optional[str]) -> dict[str, str]:
        tags = with_import_key(rec.tags, rec.import_key)
        if rec.source_run_id is not None:
            tags[SOURCE_RUN_ID_TAG] = rec.source_run_id
        system = {"mlflow.runName": rec.name, "mlflow.user": rec.user, "mlflow.source.name": rec.source,
                  "mlflow.note.content": rec.description, "mlflow.parentRunId": parent_run_id}
        if rec.source_run_id is not None:  # a moved run already has the system tags it had
            # ... but MLflow keeps the tag mlflow.runName equal to the run name (old stores did
            # not): the run name wins.
            system = {"mlflow.parentRunId": parent_run_id,
                      "mlflow.runName": rec.name if "mlflow.runName" in tags else None}
        tags.update({k: v for k, v in system.items() if v is not None})
        if rec.source is not None and "mlflow.source.type" not in tags:
            tags["mlflow.source.type"] = "LOCAL"
        return tags

    @staticmethod
    def _start_time(rec: RunRecord) -> int:
        """The original start time; else the earliest metric timestamp; else now (kept on reruns,
        because the run then exists and its start time is read back)."""
        if rec.start_time is not None:
            return rec.start_time
        if hasattr(rec.load, "min_timestamp"):  # a streamed log knows it without its points
            stamps = [rec.load.min_timestamp]
        else:
            stamps = [pc.min(t.column("timestamp")).as_py() for t in rec.metrics.values() if t.num_rows]
        stamps = [s for s in stamps if s is not None]
        return min(stamps) if stamps else int(time.time() * 1000)

    def _resolve_params(self, rec: RunRecord, stored: dict[str, str], out: Outcome) -> dict[str, str]:
        """The params still to log, after the conflict policy. Raises ConflictError for `error`."""
        todo: dict[str, str] = {}
        conflicts = []
        for k, v in rec.params.items():
            old = stored.get(k)
            if old is None:
                todo[k] = v
            elif old != v:
                conflicts.append((k, old, v))
        if not conflicts:
            return todo
        shown = "; ".join(f"{k}: stored {_short(old)}, new {_short(new)}" for k, old, new in conflicts)
        if self.policy == "error":
            raise ConflictError(f"param values differ from the ones stored on run {out.run_id or ''} "
                                f"({shown}); nothing was written to it. Use --on-param-conflict keep "
                                "or rename to go ahead")
        if self.policy == "keep":
            out.notes.append(f"kept stored params: {shown}")
            return todo
        for k, _, new in conflicts:
            alt = renamed_param(k, new)
            if stored.get(alt) is None:
                todo[alt] = new
            out.notes.append(f"param {k}: new value logged as {alt}")
        return todo

    async def _log_params_tags(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        # Params first, before any metric: a rejection then leaves no half-sent history.
        items = [("params", k, v) for k, v in params.items()] + [("tags", k, v) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            body: dict[str, Any] = {"run_id": run_id, "params": [], "tags": []}
            for kind, k, v in items[i:i + MAX_PARAMS_TAGS_PER_BATCH]:
                body[kind].append({"key": k, "value": v})
            await self.api.log_batch(body)

    async def _missing_points(self, rec: RunRecord, found: Located, start_time: int
                              ) -> tuple[dict[str, tuple[pa.Table, Optional[int]]], dict[str, pa.Table],
                                         dict[str, tuple[int, Optional[str]]]]:
        """(metric -> (points the server lacks, index in the source series of the first one or None
        when they are not a suffix); metric -> points changed at the source; metric -> its length
        and digest, for every series: all are compared or counted). The ledger's count of a
        series' first points holds where they are still the source's (LedgerTrust.prefix_holds);
        every other series is compared with the server's copy."""
        run_id = found.run["info"]["run_id"]
        known = found.trust.points_on_server(found.progress, {k: t.num_rows for k, t in rec.metrics.items()})
        missing: dict[str, tuple[pa.Table, Optional[int]]] = {}
        changed: dict[str, pa.Table] = {}
        progress: dict[str, tuple[int, Optional[str]]] = {}
        for key, table in rec.metrics.items():
            done, digest, hashed = known[key], SeriesDigest(), 0
            recorded = found.digests.get(key)
            if done and recorded is not None:  # hashed once: the prefix, then on to the whole
                hashed = done
                digest.update(table.slice(0, done))
            if done and not found.trust.prefix_holds(recorded, digest.hexdigest() if hashed else None):
                done = None
            if done is None:
                diff, edits = await self._diff_with_server(run_id, key, table, start_time)
                if diff.num_rows:
                    missing[key] = (diff, None)
                if edits.num_rows:
                    changed[key] = edits
            elif done < table.num_rows:
                missing[key] = (table.slice(done), done)
            progress[key] = (table.num_rows, digest.update(table.slice(hashed)).hexdigest())
        return missing, changed, progress

    async def _diff_with_server(self, run_id: str, key: str, table: pa.Table,
                                start_time: int) -> tuple[pa.Table, pa.Table]:
        """(points of `table` the server lacks, points changed at the source: their step and time
        are on the server with other values only). A point is its step and timestamp (a derived
        one: the run's start time); several may share them. Values compare as stored
        (`stored_value`: NaN equals NaN, +-Infinity is +-MAX_DOUBLE). A point the server holds
        exactly is there however often the source repeats it: the server keeps one copy."""
        stored = await self.api.metric_history(run_id, key)
        if not stored:
            return table, table.slice(0, 0)
        held: dict[tuple[int, int], set] = {}
        for m in stored:
            held.setdefault((int(m["step"]), int(m["timestamp"])), set()).add(stored_value(m["value"]))
        points = [((s, start_time if t is None else t), stored_value(v)) for s, t, v in
                  zip(table.column("step").to_pylist(), table.column("timestamp").to_pylist(),
                      table.column("value").to_pylist())]
        ours: dict[tuple[int, int], set] = {}
        for at, v in points:
            ours.setdefault(at, set()).add(v)
        lacks, edited = [], []
        for at, v in points:
            there = held.get(at, set())
            new = v not in there
            other = new and bool(there - ours[at])  # the server's value there is no longer the source's
            lacks.append(new and not other)
            edited.append(other)
        return table.filter(pa.array(lacks, pa.bool_())), table.filter(pa.array(edited, pa.bool_()))

    @staticmethod
    async def _batches(run_id: str, pieces, start_time: int):
        """(body, points, [(metric, source index reached or None)]) filled to the server's limit,
        from (metric, points, index in the source series of the first one or None) pieces."""
        parts: list[pa.Array] = []
        marks: list[tuple[str, Optional[int]]] = []
        size = 0
        async for key, table, base in pieces:
            offset = 0
            while offset < table.num_rows:
                take = min(MAX_METRICS_PER_BATCH - size, table.num_rows - offset)
                parts.append(metric_entries(key, table.slice(offset, take), start_time))
                offset += take
                size += take
                marks.append((key, None if base is None else base + offset))
                if size == MAX_METRICS_PER_BATCH:
                    yield batch_body(run_id, parts), size, marks
                    parts, marks, size = [], [], 0
        if size:
            yield batch_body(run_id, parts), size, marks

    async def _send_metrics(self, run_id: str, pieces, start_time: int) -> int:
        """Send batches with several in flight; the ledger's progress for a metric only moves past
        a point once every batch before it has landed too. Returns the points sent."""
        batches = self._batches(run_id, pieces, start_time)
        taking = asyncio.Lock()  # one worker at a time reads the source and builds the next body
        landed: dict[int, list] = {}
        next_to_record = 0
        counter = 0
        sent = 0
        failure: list[BaseException] = []

        async def worker() -> None:
            nonlocal counter, next_to_record, sent
            while not failure:
                async with taking:
                    item = await anext(batches, None)
                    seq, counter = counter, counter + 1
                if item is None:
                    return
                body, n, marks = item
                try:
                    await self.api.log_batch(body)
                except BaseException as e:  # stop the other workers, report the first failure
                    failure.append(e)
                    raise
                sent += n
                if self.progress:
                    self.progress(n)
                landed[seq] = marks
                reached: dict[str, int] = {}
                while next_to_record in landed:
                    for key, index in landed.pop(next_to_record):
                        if index is not None:
                            reached[key] = index
                    next_to_record += 1
                if reached:
                    self.ledger.save_progress(run_id, reached)

        results = await asyncio.gather(*(worker() for _ in range(self.api.in_flight)),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return sent

    async def _artifacts_to_send(self, run: dict, rec: RunRecord) -> list:
        """Artifacts the run lacks: not in the ledger with this file's hash, and not already on the
        server with the same bytes (checked by downloading, when the ledger does not know)."""
        todo = []
        run_id = run["info"]["run_id"]
        for art in rec.artifacts:
            digest = await _digest(art.source)
            if self.ledger.artifact(run_id, art.dest) == digest:
                continue
            try:
                stored, _ = await self.api.download_digest(
                    self.api.artifact_path(run["info"]["artifact_uri"], art.dest))
            except ServerError as e:
                if e.status != 404:
                    raise
                todo.append(art)
                continue
            if stored != digest:
                todo.append(art)
            elif not self.dry_run:
                self.ledger.save_artifact(run_id, art.dest, digest)
        return todo

    async def _upload_all(self, run: dict, artifacts: list) -> None:
        # All at once (the client bounds what is in flight): each is an upload, then a download.
        await _together(*(self._upload(run, art) for art in artifacts))

    async def _upload(self, run: dict, art) -> None:
        stored = await upload_verified(self.api, run["info"]["artifact_uri"], art)
        self.ledger.save_artifact(run["info"]["run_id"], art.dest, stored)


async def _together(*coros) -> list:
    """Run coroutines at once; returns their results. When one fails the others are cancelled
    and the failure raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let them end before going on
        raise


async def upload_verified(api: MlflowApi, artifact_uri: str, art) -> str:
    """Stream a file (model.ArtifactFile) up to `artifact_uri`, hashing what was sent, then check
    the stored copy's hash; returns it."""
    url = api.artifact_path(artifact_uri, art.dest)
    sent = hashlib.sha256()

    async def chunks():
        nonlocal sent
        sent = hashlib.sha256()  # a fresh hash for each attempt
        async for block in _chunks(art.source):
            sent.update(block)
            yield block

    await api.upload(url, chunks)
    stored, size = await api.download_digest(url)
    if stored != sent.hexdigest():
        raise ServerError(f"artifact {art.dest!r} came back different from {art.source} "
                          f"({size} bytes stored); it will be uploaded again on the next run",
                          url=api.url)
    return stored


class _GaveWay(Exception):
    """The run just created lost to another importer's copy and went to the trash unwritten."""


class _PrefixChanged(Exception):
    """A streamed series' first points are not those the ledger counts as sent (nothing of it was
    sent): the run is written again, compared with the server."""


def _new_pending_mark() -> str:
    return f"{int(time.time() * 1000)} {socket.gethostname()} {os.getpid()} {uuid.uuid4().hex[:12]}"


def _pending_mark(run: dict) -> str:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == PENDING_TAG), "")


def _abandoned(mark: str) -> bool:
    """Whether a pending run's maker will never settle it: its process is gone (same host), it
    is this very process (whose own copy in this search is another: a create whose answer was
    lost arrived late), or it is older than ABANDONED_AFTER_MS (another host: clocks may differ
    by a little, a maker rarely stalls for minutes; should it, it finds its copy gone and begins
    again)."""
    try:
        ms, host, pid, _ = mark.split(" ")
        made, pid = int(ms), int(pid)
    except ValueError:
        return True
    if host == socket.gethostname():
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            pass
    return time.time() * 1000 - made > ABANDONED_AFTER_MS


@dataclass(frozen=True)
class LedgerTrust:
    """What the ledger lets the sink take as being on the server for one record, without asking
    the server (see `ledger_trust`)."""

    unchanged: bool = False  # written completely in this very state: no request at all
    run_id: Optional[str] = None  # its run; the server is asked whether it is still there
    counts: bool = False  # once it is: the ledger's count of points sent per series holds ...
    same_state: bool = False  # ... even without a digest: counted in this very state of the record

    def points_on_server(self, sent: Mapping[str, int],
                         lengths: Mapping[str, int]) -> dict[str, Optional[int]]:
        """Per series of the record (`lengths`: its points now; `sent`: the ledger's progress), how
        many of its first points the server holds, 0 for a series the ledger never counted; None
        where the server must be asked: counts not trusted, or the ledger counts more points than
        the series has now (rewritten, not grown)."""
        if not self.counts:
            return {key: None for key in lengths}
        return {key: sent.get(key, 0) if sent.get(key, 0) <= n else None for key, n in lengths.items()}

    def prefix_holds(self, recorded: Optional[str], source: Optional[str]) -> bool:
        """Whether a series' first points that the ledger counts as sent are the source's now:
        the ledger's digest of them (`recorded`) is the source's (`source`: of as many of its first
        points); without one (a count saved batch by batch), when counted in this very state."""
        return recorded == source if recorded is not None else self.same_state

    def streamable(self, sent: Mapping[str, int], lengths: Optional[Mapping[str, int]],
                   digests: Mapping[str, Optional[str]]) -> bool:
        """Whether points can be sent to the existing run straight from a stream of the source,
        with no comparison: the counts hold, no series is shorter than the ledger counts as sent,
        including one the source no longer has (`lengths` None: unknown before reading), and what
        was sent of each can be checked while it is read (a digest; `_unsent`) or needs no check."""
        return (self.counts and (lengths is None or all(n <= lengths.get(k, 0) for k, n in sent.items()))
                and all(self.same_state if digests.get(k) is None else digests[k] != COMPARE
                        for k, n in sent.items() if n))


def ledger_trust(row: Optional[Mapping[str, Any]], *, fingerprint: str, experiment_id: Optional[str],
                 moved: bool) -> LedgerTrust:
    """The ledger-trust rule. `row`: the ledger's runs row for the record; `fingerprint`: the
    record's, with the conflict policy; `moved`: read from another MLflow store.

    A complete row with this very fingerprint, in this experiment, is believed outright. Otherwise
    its run is to be checked on the server, and once there, its counts of points sent hold in
    the very state the ledger recorded (a resumed import), and for a log (logs grow at their end)
    also after a complete import in another state; not after one interrupted (batches may have
    landed beyond the counts, and the record has changed since), nor for a moved run, which may
    have changed anywhere. Where they hold, each still needs its digest to match the source's
    first points, or, without one, the very state (`prefix_holds`): a log may be corrected in place."""
    if row is None or experiment_id is None:
        return LedgerTrust()
    same = row["fingerprint"] == fingerprint
    if row["complete"] and same and row["experiment_id"] == experiment_id:
        return LedgerTrust(unchanged=True, run_id=row["run_id"], counts=True, same_state=True)
    return LedgerTrust(run_id=row["run_id"], counts=same or (bool(row["complete"]) and not moved),
                       same_state=same)


@dataclass
class Located:
    """Where a record's run is on the server, and what the ledger knows of it."""

    experiment_id: Optional[str]
    fingerprint: str  # the record's as it was read, with the conflict policy
    run: Optional[dict]  # the run as the server gave it; None: none yet
    trust: LedgerTrust  # nothing, if the ledger's run was gone
    progress: dict[str, int]  # the ledger's points sent per series, where its counts hold
    digests: dict[str, Optional[str]]  # ... and its digest of those points (SeriesDigest), if known
    may_stream: bool = True  # False: a streamed series changed where it was sent (_PrefixChanged)


@dataclass
class WritePlan:
    """What one run still needs on the server, decided before anything is written to it."""

    create: bool  # no run yet: runs/create, carrying `tags`
    start_time: int
    params: dict[str, str]  # after the conflict policy
    tags: dict[str, str]  # those the run lacks
    own_id_tags: dict[str, str]  # of a new run, naming the source run: logged with the new id
    inputs: list[dict]
    pieces: Any  # async iterable of (metric, points, index in the source series of the first or None)
    progress: dict[str, tuple[int, Optional[str]]]  # series -> its length and digest, recorded
    # once every piece landed (COMPARE: points changed at the source, left as stored)
    artifacts: list
    set_status: bool  # end time and status, sent last
    delete: bool  # deleted at the source: deleted after all is written
    only_points: bool  # nothing but points to send: an append that sends none is `unchanged`


def _start_known(rec: RunRecord) -> bool:
    """Whether `_start_time` can tell without the run's points: a start time, or a source that
    knows its earliest point's time (a streamed log)."""
    return rec.start_time is not None or hasattr(rec.load, "min_timestamp")


def _series_lengths(rec: RunRecord) -> Optional[dict[str, int]]:
    """Each series' number of points, for a streamed log that knows them before it is read."""
    series = getattr(rec.load, "series", None)
    return None if series is None else {k: f.points for k, f in series.items()}


_CREATED_RUN_INFO = {"status": "RUNNING"}  # what runs/create makes: no end time yet


def _status_differs(info: dict, rec: RunRecord) -> bool:
    """Whether the run's status or end time (runs/update) differs from the record's."""
    return info.get("status") != rec.status or (
        rec.end_time is not None and int(info.get("end_time") or 0) != rec.end_time)


async def _aiter(items):
    for item in items:
        yield item


async def _read_ahead(pages, depth: int = 4):
    """The source's pages, read up to `depth` ahead while earlier ones are being sent."""
    queue: asyncio.Queue = asyncio.Queue(depth)
    end = object()

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put(page)
            await queue.put(end)
        except Exception as e:  # handed to the consumer, raised there
            await queue.put(e)

    task = asyncio.ensure_future(produce())
    try:
        while (page := await queue.get()) is not end:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        task.cancel()


class _unsent:
    """The pieces of a streamed run the ledger does not count as sent (`found.progress`: per metric,
    how many of its first points are on the server). Each series' first points are checked
    against the ledger's digest of them (LedgerTrust.prefix_holds) before any later point of it
    is sent: _PrefixChanged when they differ. `progress`: each series' length and digest, once read."""

    def __init__(self, pages, found: Located):
        self.pages, self.found = pages, found
        self.progress: dict[str, tuple[int, Optional[str]]] = {}
        self._digests: dict[str, SeriesDigest] = {}

    async def __aiter__(self):
        async for key, table in self.pages:
            digest = self._digests.setdefault(key, SeriesDigest())
            base = self.progress.get(key, (0, None))[0]
            done = self.found.progress.get(key, 0)
            skip = min(max(0, done - base), table.num_rows)
            digest.update(table.slice(0, skip))
            recorded = self.found.digests.get(key)
            if base < done <= base + table.num_rows and not self.found.trust.prefix_holds(
                    recorded, None if recorded is None else digest.hexdigest()):
                raise _PrefixChanged(key)
            self.progress[key] = (base + table.num_rows, digest.update(table.slice(skip)).hexdigest())
            if skip < table.num_rows:
                yield key, table.slice(skip), base + skip


_digests: dict[tuple, str] = {}


async def _chunks(source):
    """The bytes of a local file or of a file on another server (sources.server.RemoteArtifact)."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            while block := f.read(_CHUNK):
                yield block
    elif isinstance(source, bytes):
        yield source
    else:
        async for block in source.api.download(source.url_path):
            yield block


async def _digest(source) -> str:
    if isinstance(source, Path):
        return _sha256(source)
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    return (await source.api.download_digest(source.url_path))[0]


def _sha256(path) -> str:
    """files.sha256_file, remembered per state of the file (path, size, mtime) while the
    process lives."""
    st = path.stat()
    cache_key = (str(path), st.st_size, st.st_mtime_ns)
    if cache_key not in _digests:
        _digests[cache_key] = sha256_file(path)
    return _digests[cache_key]


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
