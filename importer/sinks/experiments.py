"""Experiments that move with their runs (from a server, a bundle, an `mlruns/` folder or an
mlflow-export-import folder): created on the destination with their tags, empty ones too, and
deleted there again when they were deleted at the source.

A deleted experiment takes no new runs, so it is restored (or created active) for the writing,
marked with the tag `importer.deleted_at_source`, and deleted once its runs are in. An active
experiment of that name on the destination without the mark is the destination's own and is never
deleted. Shards (`--shard I/N`) cannot know when the others are done, so each shard that finishes
marks the experiment with the tag `importer.shard_done.N.I`; the shard that finds all N marks
deletes it. A rerun restores it for its writing and deletes it again.
"""

from __future__ import annotations

from typing import Optional

from ..errors import ServerError
from ..mlflow_api import MlflowApi, pairs
from ..model import ExperimentRecord

SHARD_DONE_TAG = "importer.shard_done.{n}.{i}"
DELETED_AT_SOURCE_TAG = "importer.deleted_at_source"  # this move made or restored it: ours to delete


async def prepare(dest: MlflowApi, exps: list[ExperimentRecord],
                  kind_tags: dict[str, str]) -> tuple[list[str], dict[str, bool], list[str]]:
    """Create every experiment on the destination with its tags. One deleted at the source is
    restored there for the writing (if an earlier move deleted it) or created, and marked with
    DELETED_AT_SOURCE_TAG; the ids of those are returned, to be deleted again by `finish` once the
    runs are in. Never deleted: an active experiment of the same name without that mark (the
    destination's own), nor is one deleted on the destination but active at the source restored
    (writing its runs then fails, saying so). Returns (ids to delete, the experiments prepared
    as name -> created just now (then it holds no run yet), notes)."""
    deleted, prepared, notes = [], {}, []
    for exp in exps:
        gone = exp.lifecycle == "deleted"
        found = await dest.experiment_by_name(exp.name)
        have = pairs((found or {}).get("tags"))
        if found is not None and found.get("lifecycle_stage") == "deleted":
            if not gone:
                continue
            await dest.call("experiments/restore", {"experiment_id": found["experiment_id"]})
        elif found is not None and gone and DELETED_AT_SOURCE_TAG not in have:
            notes.append(f"experiment {exp.name!r} is deleted at the source but active on the "
                         "destination, which has it already: left active (its runs are deleted)")
            gone = False
        if found is not None:  # active, or restored just now
            exp_id, prepared[exp.name] = found["experiment_id"], False
        else:
            exp_id, prepared[exp.name] = await dest.get_or_create_experiment(exp.name, kind_tags, found=None)
        for k, v in (exp.tags | ({DELETED_AT_SOURCE_TAG: "true"} if gone else {})).items():
            if have.get(k) != v:
                await dest.set_experiment_tag(exp_id, k, v)
        if gone:
            deleted.append(exp_id)
    return deleted, prepared, notes


async def finish(dest: MlflowApi, deleted: list[str], shard: Optional[tuple[int, int]] = None) -> list[str]:
    """Delete again the experiments `prepare` restored or created for the writing; with a shard,
    only once every shard has marked them done. Returns notes for the summary."""
    notes = []
    for exp_id in deleted:
        try:
            if shard is not None:
                i, n = shard
                await dest.set_experiment_tag(exp_id, SHARD_DONE_TAG.format(n=n, i=i), "true")
                tags = pairs((await _get(dest, exp_id)).get("tags"))
                waiting = [j for j in range(1, n + 1) if SHARD_DONE_TAG.format(n=n, i=j) not in tags]
                if waiting:
                    notes.append(f"experiment {exp_id} is deleted at the source; it stays active here "
                                 f"until shards {', '.join(map(str, waiting))} of {n} are done too")
                    continue
            await dest.call("experiments/delete", {"experiment_id": exp_id})
        except ServerError:  # another shard, finishing at the same moment, deleted it first
            if (await _get(dest, exp_id)).get("lifecycle_stage") != "deleted":
                raise
    return notes


async def _get(dest: MlflowApi, exp_id: str) -> dict:
    return (await dest.call("experiments/get", {"experiment_id": exp_id}, get=True))["experiment"]
