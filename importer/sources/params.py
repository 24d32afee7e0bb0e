"""Params as each framework's own MLflow integration writes them (issue 14).

A run logged live and the same run imported from its log must have the same param keys and texts,
so that they compare in the UI and in `search_runs` (`params.use_bias = 'True'`). MLflow itself
sends `str(value)` for every param value. The rules, and where each framework writes them down:

* Lightning (`lightning_params`): `MLFlowLogger.log_hyperparams`
  (lightning/pytorch/loggers/mlflow.py) calls `_convert_params` then `_flatten_dict`
  (lightning/fabric/utilities/logger.py): nested mappings (and dataclasses, Namespaces) are
  flattened with `/` (`sched/gamma`), an empty mapping gives no key, a later key overwrites an
  earlier one of the same flattened name; lists and tuples are not flattened; then
  `Param(key=k, value=str(v)[:250])`: `True`, `None`, `(0.9, 0.99)`, `[2]`, `1e-05`. A value
  longer than 250 characters is cut to its first 250 (LIGHTNING_VALUE_LENGTH), with a note naming
  the keys (Lightning PR #16451, in every release since 1.9; the open PR #20636 would use MLflow's
  MAX_PARAM_VAL_LENGTH instead). Keys are not sanitized by Lightning (the server would refuse the
  batch); the importer maps them with safe_metric_key and notes it.
* transformers (`transformers_params`): `MLflowCallback.setup`
  (transformers/integrations/integration_utils.py) logs `{**model.config.to_dict(),
  **args.to_dict()}`: the training arguments win over a model-config key of the same name; nothing
  is flattened unless MLFLOW_FLATTEN_PARAMS is set (no file says it was: not done here), so nested
  values are Python's text (`{0: 'NEGATIVE', 1: 'POSITIVE'}`, `['DistilBertForMaskedLM']`);
  `mlflow.log_params` sends `str(value)` (`False`, `None`, `5e-05`); a value longer than MLflow's
  MAX_PARAM_VAL_LENGTH is left out with a warning (a note here). `config.to_dict()` has the keys of
  `id2label` as integers (PretrainedConfig turns them back from the JSON's strings). config.json
  holds only what differs from the model class's defaults (`to_diff_dict`), so the defaults a live
  run also logs are not there to import.
* Ultralytics (`ultralytics_params`): `on_pretrain_routine_end`
  (ultralytics/utils/callbacks/mlflow.py) calls `mlflow.log_params(dict(trainer.args))`: top-level
  keys only, nothing flattened, `str(value)`, no cut (a value over 6000 characters makes MLflow
  refuse the call: a problem here, as in base.checked_params).

`ObjectLoader` reads hparams.yaml so that `str()` gives the live text: `!!python/tuple` is a tuple
(Lightning's `save_hparams_to_yaml` uses `yaml.dump`, which tags tuples), `!!binary` is bytes,
timestamps are datetimes, and nothing is ever executed (see yamlfile.DataLoader).
"""

from __future__ import annotations

import struct
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional

import yaml

from ..errors import Problem
from ..model import MAX_PARAM_VALUE_LENGTH
from .base import bounded, server_params
from .yamlfile import DataLoader, load_yaml, tag_name

# MLFlowLogger.log_hyperparams: `Param(key=k, value=str(v)[:250])` (lightning/pytorch/loggers/mlflow.py)
LIGHTNING_VALUE_LENGTH = 250


class Opaque:
    """A tagged YAML node that is neither a mapping of state nor a value we can rebuild: `str()`
    gives `<tag> <content>` (the live text was the object's repr, which no file holds)."""

    def __init__(self, tag: str, content: Any):
        self.tag, self.content = tag, content

    def __repr__(self) -> str:
        return f"{self.tag} {self.content!r}"


class ObjectState(dict):
    """The state mapping of a `!!python/object:<class>` node (a dataclass, an argparse.Namespace or
    another object): Lightning's `_flatten_dict` flattens dataclasses (`asdict`) and Namespaces
    (`vars`), so it is flattened like a dict; `tag` keeps the class."""

    tag = ""


_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
_STRUCT = {"i1": "b", "i2": "h", "i4": "i", "i8": "q", "u1": "B", "u2": "H", "u4": "I", "u8": "Q",
           "f8": "d", "b1": "?"}
_PATHS = {"PosixPath": PurePosixPath, "PurePosixPath": PurePosixPath,
          "WindowsPath": PureWindowsPath, "PureWindowsPath": PureWindowsPath}


def _numpy_scalar(items: Any) -> Any:
    """A numpy scalar (`!!python/object/apply:numpy..scalar [dtype, bytes]`) as the Python number
    whose str() numpy's str() equals (int, bool, float64), or None."""
    try:
        dtype, raw = items
        code = dtype.content["args"][0]
        order = dtype.content["state"][1]
        fmt = _STRUCT[code]
        if not isinstance(raw, bytes):
            return None
        (value,) = struct.unpack(("<" if order in ("<", "|") else ">" if order == ">" else "=") + fmt,
                                 raw)
        return value
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, struct.error):
        return None


def _construct_tagged(loader: "ObjectLoader", node: yaml.Node) -> Any:
    tag = tag_name(node.tag)
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        if tag == "!!python/tuple":
            return tuple(items)
        name = tag.rsplit(":", 1)[-1]
        if tag.startswith("!!python/object/apply:"):
            if name in _NUMPY_SCALAR and (value := _numpy_scalar(items)) is not None:
                return value
            if name.startswith("pathlib.") and name.rsplit(".", 1)[-1] in _PATHS \
                    and all(isinstance(i, str) for i in items):
                return str(_PATHS[name.rsplit(".", 1)[-1]](*items))
        return Opaque(tag, items)
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        if tag.startswith("!!python/object:"):
            state = ObjectState(mapping)
            state.tag = tag
            return state
        return Opaque(tag, mapping)
    return Opaque(tag, loader.construct_scalar(node))


class ObjectLoader(DataLoader):
    """DataLoader (a SafeLoader: nothing is executed) that yields what `str()` needs for the live
    text: tuples, bytes, datetimes, numpy scalars as numbers, pathlib paths as text, the state of a
    `!!python/object` as a mapping, any other tagged node as an Opaque."""


ObjectLoader.add_constructor(None, _construct_tagged)
ObjectLoader.add_constructor("tag:yaml.org,2002:binary", yaml.SafeLoader.construct_yaml_binary)
ObjectLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_timestamp)


def load_objects(path: Path, problems: list[Problem]) -> Optional[Any]:
    """One YAML document read with ObjectLoader; a syntax error or non-UTF-8 text is a problem."""
    return load_yaml(path, problems, ObjectLoader)


def _children(node: Any) -> Optional[Any]:
    """The children of a params tree's node: of dicts, lists, tuples and Opaque values."""
    if isinstance(node, dict):
        return node.values()
    if isinstance(node, (list, tuple)):
        return node
    return [node.content] if isinstance(node, Opaque) else None


def flatten_slash(params: dict, parent: str = "") -> tuple[dict[str, Any], list[str]]:
    """Lightning's `_flatten_dict(params, delimiter="/")`: mappings flattened with `/`, an empty
    mapping gives nothing, a later key overwrites an earlier one (the overwritten keys are
    returned too)."""
    out: dict[str, Any] = {}
    overwritten: list[str] = []
    for k, v in params.items():
        key = f"{parent}/{k}" if parent else str(k)
        if isinstance(v, dict):
            sub, over = flatten_slash(v, key)
            overwritten += over + [s for s in sub if s in out]
            out.update(sub)
        else:
            if key in out:
                overwritten.append(key)
            out[key] = v
    return out, overwritten


def lightning_params(raw: dict, file: str, origin: str, problems: list[Problem],
                     notes: list[str]) -> dict[str, str]:
    """hparams as MLFlowLogger.log_hyperparams writes them (module docstring)."""
    try:
        bounded(raw, _children)
        flat, overwritten = flatten_slash(raw)
        texts = {k: str(v) for k, v in flat.items()}
    except (ValueError, RecursionError) as e:
        problems.append(Problem(file, "params", str(e) or "the parameters nest too deeply"))
        return {}
    if overwritten:
        notes.append(f"{origin}: params given twice once flattened with '/', the later value "
                     f"kept as Lightning's _flatten_dict does: {', '.join(sorted(set(overwritten)))}")
    return server_params(texts, file, origin, problems, notes, LIGHTNING_VALUE_LENGTH,
                         "Lightning's MLFlowLogger")


def ultralytics_params(raw: dict, file: str, origin: str, problems: list[Problem],
                       notes: list[str]) -> dict[str, str]:
    """args.yaml as Ultralytics' MLflow callback writes it: `str(value)` per top-level key."""
    try:
        bounded(raw, _children)
        texts = {str(k): str(v) for k, v in raw.items()}
    except (ValueError, RecursionError) as e:
        problems.append(Problem(file, "params", str(e) or "the parameters nest too deeply"))
        return {}
    return server_params(texts, file, origin, problems, notes)


def _integer_keys(labels: dict) -> dict:
    """id2label as PretrainedConfig holds it: `{0: ...}` where the JSON has `{"0": ...}`."""
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in labels.items()}


def transformers_params(args: Optional[dict], config: Optional[dict], file: str, origin: str,
                        problems: list[Problem], notes: list[str]) -> dict[str, str]:
    """training_args.json and config.json as transformers' MLflowCallback logs them (module docstring)."""
    config = dict(config or {})
    args = args or {}
    if isinstance(config.get("id2label"), dict):
        config["id2label"] = _integer_keys(config["id2label"])
    try:
        bounded({"args": args, "config": config}, _children)
        texts = {str(k): str(v) for k, v in {**config, **args}.items()}
    except (ValueError, RecursionError) as e:
        problems.append(Problem(file, "params", str(e) or "the parameters nest too deeply"))
        return {}
    shadowed = sorted(k for k in config if k in args and config[k] != args[k])
    if shadowed:
        notes.append(f"{origin}: keys of both the training arguments and the model config take the "
                     f"arguments' value, as transformers' MLflowCallback does: {', '.join(shadowed)}")
    too_long = [k for k, v in texts.items() if len(v) > MAX_PARAM_VALUE_LENGTH]
    if too_long:
        notes.append(f"{origin}: params longer than {MAX_PARAM_VALUE_LENGTH} characters left out, as "
                     f"transformers' MLflowCallback leaves them out: {', '.join(too_long)}")
    return server_params({k: v for k, v in texts.items() if k not in too_long}, file, origin,
                         problems, notes)
