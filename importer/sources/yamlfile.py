"""YAML files read as plain data: a SafeLoader that never builds Python objects.

Used for the params files of Lightning (`hparams.yaml`) and YOLO (`args.yaml`, `opt.yaml`,
`hyp.yaml`): tags such as `!!python/object` become data (see DataLoader), so every value is
JSON-representable and nothing in a file is ever executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import Problem

class DataLoader(yaml.SafeLoader):
    """A SafeLoader that reads every document as plain data and never builds Python objects.

    Rule for tags SafeLoader does not know (`!!python/object:...`, `!!python/name:...`,
    `!!python/object/apply:...`, `!local` ...): the node becomes a mapping
    `{"__tag__": "<tag as written, !! form>", **mapping}` for a mapping node,
    `{"__tag__": tag, "value": scalar}` for a scalar and `{"__tag__": tag, "items": [...]}` for a
    sequence. `!!python/tuple` is read as a plain list. `!!binary` stays its base64 text and
    timestamps stay the text written, so every value is JSON-representable. Anchors and aliases are
    resolved by PyYAML (cycles and alias bombs are refused later by `base.checked_params`)."""


def tag_name(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _construct_unknown(loader: DataLoader, node: yaml.Node) -> Any:
    tag = tag_name(node.tag)
    if isinstance(node, yaml.MappingNode):
        return {"__tag__": tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        return items if tag == "!!python/tuple" else {"__tag__": tag, "items": items}
    return {"__tag__": tag, "value": loader.construct_scalar(node)}


def _construct_text(loader: DataLoader, node: yaml.Node) -> str:
    return "".join(str(loader.construct_scalar(node)).split()) if node.tag.endswith(":binary") \
        else str(loader.construct_scalar(node))


DataLoader.add_constructor(None, _construct_unknown)
DataLoader.add_constructor("tag:yaml.org,2002:binary", _construct_text)
DataLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)


def load_yaml(path: Path, problems: list[Problem], loader: Optional[type] = None) -> Optional[Any]:
    """One YAML document read with `loader` (DataLoader, or a SafeLoader subclass of it); a syntax
    error or non-UTF-8 text is a problem."""
    try:
        text = path.read_bytes().decode("utf-8")
        return yaml.load(text, Loader=loader or DataLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        problems.append(Problem(str(path), f"line {line}", "the file is not UTF-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problems.append(Problem(str(path), where, f"not valid YAML: {getattr(e, 'problem', e)}"))
    return None
