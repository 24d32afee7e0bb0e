"""The run manifest, format version 1, as a user writes it.

`schemas/run-manifest.schema.json` is generated from these pydantic models (`importer schema`);
sources/manifest.py reads a document into RunRecords with them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union

import pyarrow as pa
import pydantic
from pydantic import (AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      StrictFloat, StrictInt, StrictStr, Tag, TypeAdapter, WrapValidator)
from pydantic_core import PydanticCustomError

from .values import NumberText, float_problem, int64_problem

def _one_error(message: str):
    """A wrap validator that turns a union's several branch errors into one plain message."""
    def wrap(value: Any, handler):
        try:
            return handler(value)
        except pydantic.ValidationError:
            raise PydanticCustomError("invalid", message + f", got {value!r}") from None
    return WrapValidator(wrap)


def _in_range(problem):
    """A wrap validator refusing a number out of the range `problem` (values.int64_problem,
    values.float_problem) checks, by that rule's message; anything else goes on."""
    def wrap(value: Any, handler):
        if isinstance(value, NumberText) or type(value) is int:
            message = problem(value)
            if message:
                raise PydanticCustomError("range", message.replace("{", "{{").replace("}", "}}"))
        return handler(value)
    return WrapValidator(wrap)


Int64 = Annotated[StrictInt, _in_range(int64_problem)]
def _date_text(value: Any) -> Any:
    """Only text (or a datetime) is read as a date: pydantic would take a number as seconds since
    the epoch, and a timestamp here is milliseconds (1.5 must not become 1500 ms)."""
    if not isinstance(value, (str, datetime)):
        raise ValueError("not a date")
    return value


Timestamp = Annotated[
    Union[StrictInt, Annotated[AwareDatetime, BeforeValidator(_date_text)]],
    Field(description="Milliseconds since the epoch, or ISO 8601 with a UTC offset."),
    _one_error("must be milliseconds since the epoch (an integer) or ISO 8601 with a UTC offset"),
    _in_range(int64_problem),
]
MetricValue = Annotated[
    Union[StrictInt, StrictFloat, Literal["NaN", "Infinity", "-Infinity"]],
    Field(description='A number, or one of the strings "NaN", "Infinity", "-Infinity".'),
    _one_error('must be a number or one of "NaN", "Infinity", "-Infinity"'),
    _in_range(float_problem),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Strict):
    step: Int64
    value: MetricValue
    timestamp: Optional[Timestamp] = None


class Column:
    """A metric column the reader already converted to Arrow (see sources/jsondoc.py)."""

    def __init__(self, array: pa.Array | pa.ChunkedArray):
        self.array = array


def _converted(value: Any, handler):
    return value if isinstance(value, Column) else handler(value)


class Columns(_Strict):
    """A metric history as parallel arrays; `timestamp` may be left out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    step: Annotated[list[StrictInt], WrapValidator(_converted)]
    value: Annotated[list[MetricValue], WrapValidator(_converted)]
    timestamp: Annotated[Optional[list[Timestamp]], WrapValidator(_converted)] = None


def _metric_shape(v: Any) -> str:
    if isinstance(v, list):
        return "points"
    if isinstance(v, dict):
        return "columns"
    return "scalar"


Metric = Annotated[
    Union[
        Annotated[MetricValue, Tag("scalar")],
        Annotated[list[Point], Tag("points")],
        Annotated[Columns, Tag("columns")],
    ],
    Discriminator(_metric_shape),
]


class Artifact(_Strict):
    path: StrictStr = Field(description="A file or folder, relative to the manifest's folder.")
    dest: Optional[StrictStr] = Field(None, description="A folder inside the run's artifacts.")


class ModelEntry(_Strict):
    path: StrictStr = Field(description="A folder or file among the run's artifacts (as stored: "
                            "its `dest` and name), typically holding an `MLmodel` file.")
    name: StrictStr = Field(description="The registered model; created when it does not exist.")
    aliases: list[StrictStr] = Field(default_factory=list,
                                     description="Set on the registered model, pointing at this version.")
    tags: dict[str, StrictStr] = Field(default_factory=dict, description="The version's tags.")
    description: Optional[StrictStr] = Field(None, description="The version's description.")


class Run(_Strict):
    id: Optional[StrictStr] = Field(
        None, description="Import key, unique in the manifest; parents refer to it.")
    name: Optional[StrictStr] = None
    experiment: Optional[StrictStr] = None
    description: Optional[StrictStr] = None
    user: Optional[StrictStr] = None
    source: Optional[StrictStr] = None
    start_time: Optional[Timestamp] = None
    end_time: Optional[Timestamp] = None
    status: Literal["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"] = "FINISHED"
    params: dict[str, Any] = Field(
        default_factory=dict, description="Nested objects and lists are flattened to dotted keys.")
    tags: dict[str, StrictStr] = Field(default_factory=dict)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    models: list[ModelEntry] = Field(
        default_factory=list, description="Model versions to register from this run's artifacts.")
    parent: Optional[StrictStr] = Field(
        None, description="The `id` of another run in this manifest, or an existing MLflow run id.")
    runs: list["Run"] = Field(default_factory=list, description="Child runs of this run.")


class Manifest(_Strict):
    format_version: Literal[1]
    experiment: Optional[StrictStr] = None
    runs: list[Run]


def manifest_json_schema() -> dict:
    """The JSON Schema of a manifest document: a `Manifest`, or one `Run` naming its experiment."""
    schema = TypeAdapter(Union[Manifest, Run]).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "importer run manifest, format version 1"
    schema["description"] = (
        "Either {format_version: 1, experiment, runs: [RUN, ...]} or a single RUN object that names "
        "its experiment. A document with `format_version` is read as the first form.")
    return schema
