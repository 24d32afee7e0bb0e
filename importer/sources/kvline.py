"""One text line's message as a record: a leading step marker and delimited name/value fields.

Used by the text-log source's `logging` and `kv` dialects; the rules are in docs/formats/text.md
("Generic key/value lines"). Pure functions of one message: no file, no state.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Optional

NUM = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
_WORD = r"[A-Za-z_][\w./@-]*"
MAX_NAME_WORDS = 4

# `Epoch 3`, `Epoch 3/10`, `epoch [3/10]`, `step 100`, `iter 5`, `it 5`, `iteration 5` at the start of
# the message; never `step=5` / `step: 5` (those are step fields).
MARKER = re.compile(r"^\s*(epoch|step|iteration|iter|it)(?:\s+|\s*[\[(]\s*)(\d+)\s*(?:/\s*(\d+)\s*)?[\])]?"
                    r"(?=[\s,|:\t]|$):?", re.IGNORECASE)
# Field delimiters: `,` `|` tab ` - `.
_DELIM = re.compile(r"\s*(?:,|\||\t|\s-\s)\s*")
# `name=value` / `name: value` pairs of single-token names (the logging dialect's pairs).
PAIR = re.compile(r"(?<![\w./@-])(" + _WORD + r")\s*(?:=\s*|:\s*)(" + NUM + r")(?![\w.:/])")
_WORDS_SEP = re.compile(r"((?:" + _WORD + r"\s+)*" + _WORD + r")\s*[=:]\s*(" + NUM + r")")
_WORDS_SPACE = re.compile(r"((?:" + _WORD + r"\s+)*" + _WORD + r")\s+(" + NUM + r")")
_DIGIT = re.compile(r"\d")
STEP_KEYS = ("step", "global_step", "iter", "iteration", "it", "update", "num_updates")
_STEP_MARKERS = ("step", "iter", "iteration", "it")


def metric_name(words: str) -> str:
    """A printed name as a metric key: one word as printed (`Loss`, `mAP`, `val/AR@100`); several
    words joined by `_`, each capitalised word (`Train`, `Loss`) lower-cased, others as printed
    (`Train Loss` -> `train_loss`, `grad norm` -> `grad_norm`, `Val mAP` -> `val_mAP`)."""
    parts = words.split()
    if len(parts) == 1:
        return parts[0]
    return "_".join(p.lower() if p[:1].isupper() and p[1:] == p[1:].lower() else p for p in parts)


@dataclass
class Line:
    step: Optional[int] = None  # from the marker or a step field; None: none in the line
    marker: Optional[str] = None  # the marker word (lower case), if the message starts with one
    metrics: dict[str, float] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)  # what could not be mapped (problems)


def _same(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def parse(message: str, skip=lambda name: False) -> Line:
    """The record in one message. With a leading marker every field must be a pair (`name=v`,
    `name: v` or `name v`); without one, only `=`/`:` pairs are read (other text is prose).
    `skip(name)` drops single-token names that are not metrics (the logger's own fields)."""
    out = Line()
    rest = message
    marker_n: Optional[int] = None
    if m := MARKER.match(message):
        out.marker, marker_n, rest = m.group(1).lower(), int(m.group(2)), message[m.end():]
    record = out.marker is not None
    found: list[tuple[str, float]] = []
    unread: list[str] = []
    for n, text in enumerate(_DELIM.split(rest), 1):
        text = text.strip()
        if not text:
            continue
        pairs = [(k, v) for k, v in PAIR.findall(text) if not skip(k)]
        whole = _WORDS_SEP.fullmatch(text) if len(pairs) == 1 else None
        if whole and len(whole.group(1).split()) <= MAX_NAME_WORDS:
            found.append((metric_name(whole.group(1)), float(whole.group(2))))
        elif pairs:
            found += [(k, float(v)) for k, v in pairs]
            if record and _DIGIT.search(PAIR.sub("", text)):
                unread.append(f"field {n} ({text[:60]!r}) has numbers outside its `name=value` / "
                              "`name: value` pairs; they are not read")
        elif record and (sp := _WORDS_SPACE.fullmatch(text)) and len(sp.group(1).split()) <= MAX_NAME_WORDS:
            found.append((metric_name(sp.group(1)), float(sp.group(2))))
        elif record and _DIGIT.search(text):
            unread.append(f"field {n} ({text[:60]!r}) is not a `name=value`, `name: value` or "
                          "`name value` pair; not read")
    if found:  # a line without any pair is prose, not a record with a lost value
        out.issues += unread
    twice: set[str] = set()
    for k, v in found:
        if k in out.metrics and not _same(out.metrics[k], v):
            twice.add(k)
        out.metrics.setdefault(k, v)
    for k in sorted(twice):
        del out.metrics[k]
        out.issues.append(f"`{k}` has two different values in this line; neither is read")
    field_step = None
    for k in STEP_KEYS:
        if k in out.metrics and out.metrics[k].is_integer():
            field_step = int(out.metrics.pop(k))
            break
    if out.marker in _STEP_MARKERS:
        if field_step is not None and field_step != marker_n:
            out.issues.append(f"the `{out.marker} {marker_n}` marker and the step field ({field_step}) "
                              "disagree; the line is not read")
            out.metrics.clear()
        out.step = marker_n
    elif out.marker == "epoch" and field_step is not None:  # the finer step wins; the epoch is a metric
        out.step = field_step
        if "epoch" in out.metrics and not _same(out.metrics["epoch"], float(marker_n)):
            out.issues.append(f"the `epoch {marker_n}` marker and the epoch field disagree; "
                              "`epoch` is not read")
            del out.metrics["epoch"]
        else:
            out.metrics["epoch"] = float(marker_n)
    elif out.marker == "epoch":
        out.step = marker_n
    else:
        out.step = field_step
    return out
