"""Which files of a training run folder are its saved model, per log format, in one place.

`import PATH --register-model NAME` uploads them as the run's artifacts under `model/` and
registers a version of NAME from there (sinks/registry.py); without the option they are not
uploaded (they may be gigabytes) and a note names them. The sources do not know about models:
`attach` is called on what a source read, with the unit it read.

Rules, by the source's format name:

* `hf`: a Trainer output folder holding `config.json` and weights (`model.safetensors`,
  `pytorch_model.bin`, or their shards with the index): those, `generation_config.json` and the
  tokenizer's files. Without them, the same files of the checkpoint trainer_state.json names as
  `best_model_checkpoint`, else of the newest `checkpoint-<N>` holding them (a note says which).
  Optimizer, scheduler and trainer state are not the model.
* `lightning`: the version folder's `checkpoints/*.ckpt`: one named `best*`; else the one
  checkpoint that is not `last.ckpt` (ModelCheckpoint keeps the best one, save_top_k=1); else
  `last.ckpt`; with several candidates, the newest by modification time (a note says so).
* `yolo`: the run's `weights/best.pt` (else `weights/last.pt`, with a note).
* `keras`: a `.keras` or `.h5` file beside the CSV log: the one with the log's name, else the only
  one; it goes with the log's last run (the last `fit()`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from ..model import ArtifactFile, ModelToRegister, RunRecord
from .base import SourceResult

MODEL_DIR = "model"  # where in the run's artifacts the files go, and the version's path

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model-*-of-*.safetensors",
               "pytorch_model-*-of-*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_HF_EXTRA = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
             "sentencepiece.bpe.model", "tokenizer.model", "preprocessor_config.json", "chat_template.jinja")


def _hf_saved(folder: Path) -> list[Path]:
    weights = sorted({p for pattern in _HF_WEIGHTS for p in folder.glob(pattern) if p.is_file()})
    if not (folder / "config.json").is_file() or not weights:
        return []
    return [folder / "config.json"] + weights + [folder / n for n in _HF_EXTRA if (folder / n).is_file()]


def _hf_best_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint folder trainer_state.json names as best (`best_model_checkpoint`, set when
    the Trainer tracks a metric), if it is inside the run folder."""
    try:
        best = json.loads((folder / "trainer_state.json").read_text()).get("best_model_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    candidate = folder / Path(best).name if isinstance(best, str) and best else None
    return candidate if candidate is not None and candidate.is_dir() else None


def hf(folder: Path, log: Path, notes: list[str]) -> list[Path]:
    saved = _hf_saved(folder)
    if saved:
        return saved
    # No final save_model(): the best checkpoint, else the newest one holding a model.
    best = _hf_best_checkpoint(folder)
    checkpoints = sorted((p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit()),
                         key=lambda p: int(p.name[11:]), reverse=True)
    for ckpt in ([best] if best else []) + checkpoints:
        if saved := _hf_saved(ckpt):
            why = "best_model_checkpoint in trainer_state.json" if ckpt == best else "the newest checkpoint"
            notes.append(f"{folder}: no model saved in the output folder; {ckpt.name}/ is taken ({why})")
            return saved
    return []


def lightning(folder: Path, log: Path, notes: list[str]) -> list[Path]:
    ckpts = sorted(p for p in (folder / "checkpoints").glob("*.ckpt") if p.is_file())
    best = [p for p in ckpts if p.name.startswith("best")]
    kept = [p for p in ckpts if p.stem != "last"]
    last = [p for p in ckpts if p.stem == "last"]
    candidates = best or kept or last
    if len(candidates) > 1:
        newest = max(candidates, key=lambda p: p.stat().st_mtime_ns)
        notes.append(f"{folder}: {len(candidates)} checkpoints; the newest, {newest.name}, is taken "
                     "as the model (which is best is written only inside the checkpoints)")
        return [newest]
    return candidates


def yolo(folder: Path, log: Path, notes: list[str]) -> list[Path]:
    best, last = folder / "weights" / "best.pt", folder / "weights" / "last.pt"
    if best.is_file():
        return [best]
    if last.is_file():
        notes.append(f"{folder}: no weights/best.pt; weights/last.pt is taken as the model")
        return [last]
    return []


def keras(folder: Path, log: Path, notes: list[str]) -> list[Path]:
    saved = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".keras", ".h5"))
    named = [p for p in saved if p.stem == log.stem]
    if named or len(saved) == 1:
        return (named or saved)[:1]
    if saved:
        notes.append(f"{log}: several model files beside it ({', '.join(p.name for p in saved)}) and "
                     "none has its name; none taken as its model")
    return []


# format name -> rule(run folder, the log file or folder read, notes) -> the model's files
RULES: dict[str, Callable[[Path, Path, list[str]], list[Path]]] = {
    "hf": hf, "lightning": lightning, "yolo": yolo, "keras": keras}


def _log_of(rec: RunRecord) -> Path:
    """The file or folder a record was read from: the head of its origin (`<path>: <where>`)."""
    return Path(rec.origin.rsplit(": ", 1)[0])


def _run_folder(fmt: str, log: Path) -> Path:
    if fmt == "hf":  # the state file may be a checkpoint's; the model is in the output folder
        folder = log if log.is_dir() else log.parent
        return folder.parent if folder.name.startswith("checkpoint-") or folder.name == "last-checkpoint" else folder
    return log if log.is_dir() else log.parent


def attach(fmt: str, result: SourceResult, register_as: Optional[str]) -> list[Path]:
    """Find the saved model of each run `result` holds (by the rule of format `fmt`). With
    `register_as`, add its files to the run's artifacts under `model/` and a version of that
    registered model to register; without, a note names them. Returns the files found."""
    rule = RULES.get(fmt)
    if rule is None:
        return []
    last_of_log = {_log_of(rec): rec for rec in result.records}  # a log's later runs come later
    found: list[Path] = []
    for log, rec in last_of_log.items():
        folder = _run_folder(fmt, log)
        files = rule(folder, log, result.notes) if folder.is_dir() else []
        found += files
        if files and register_as:
            rec.artifacts += [ArtifactFile(p, f"{MODEL_DIR}/{p.name}") for p in files]
            rec.models.append(ModelToRegister(register_as, MODEL_DIR))
        elif files:
            result.notes.append(f"{folder}: model files seen, not uploaded: "
                                + ", ".join(str(p.relative_to(folder)) for p in files)
                                + " (--register-model NAME uploads and registers them)")
        elif register_as:
            result.notes.append(f"{folder}: no saved model found; nothing registered for this run")
    return found
