"""The flow's parameter types, so a run with a wrong value is refused when it is created, not when it starts.

Prefect turns the flow's signature into a JSON schema: the UI draws its run form from it (a dropdown for each
`Literal`, a section with help text for each model) and, for a deployment served with `enforce_parameter_schema`
(`serve` turns it on), the API refuses a new run whose parameters do not match it. So a misspelled preset, a stage
that does not exist or an override key the config does not have fails at `prefect deployment run`. What JSON
schema cannot say (one field's value against another's) is left to `load_config`, at flow start.

No Prefect import here: `zero-chatgpt run` checks its options with these types before Prefect loads.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from zero_chatgpt.config import STAGES, PipelineConfig, Section, preset_names

# Literals built from the shipped presets and the stage list, so the run form offers exactly these.
PresetName = Literal[tuple(preset_names())]  # type: ignore[valid-type]
StageName = Literal[STAGES]  # type: ignore[valid-type]


@cache  # one model per section class, so a section used in several places has one schema definition
def _overrides_model(section: type[Section]) -> type[Section]:
    """`section` with every field optional (default None: not overridden) and unknown keys still forbidden.

    Field types, bounds and descriptions are kept, so the schema checks a value's type and range and the form
    shows each key's help; nested sections become their override models too. The sections' cross-field checks
    are not copied: `load_config` runs them on the merged config, where the other fields' values are known.
    """
    fields: dict[str, Any] = {
        name: (Optional[_overrides_type(field.annotation)], _optional_copy(field))  # noqa: UP045 (runtime union)
        for name, field in section.model_fields.items()
    }
    return create_model(
        f"{section.__name__}Overrides",
        __base__=Section,
        __doc__=section.__doc__,
        __module__=__name__,
        **fields,
    )


def _overrides_type(annotation: Any) -> Any:
    """An annotation with every config section in it replaced by that section's override model."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return _overrides_model(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is None or origin is Literal or not args:
        return annotation
    if origin is Annotated:
        return Annotated[(_overrides_type(args[0]), *annotation.__metadata__)]
    replaced = tuple(_overrides_type(arg) for arg in args)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return Union[replaced]  # noqa: UP007 (a union built at run time from a tuple)
    return origin[replaced] if len(replaced) > 1 else origin[replaced[0]]


def _optional_copy(field: FieldInfo) -> FieldInfo:
    """`field`'s description and bounds, with None as its default (an override that is not given)."""
    return FieldInfo.merge_field_infos(field, default=None, default_factory=None)


PipelineConfigOverrides = _overrides_model(PipelineConfig)
PipelineConfigOverrides.__doc__ = (
    "Config values that replace the preset's, by section (`pretrain.optim.max_steps`, ...); lists are replaced "
    "whole. Keys the config does not have are refused."
)


def overrides_dict(overrides: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The nested mapping `load_config` merges: only the keys that were given (an explicit null included)."""
    if overrides is None:
        return {}
    if isinstance(overrides, BaseModel):
        return overrides.model_dump(mode="json", exclude_unset=True)
    return dict(overrides)


def run_name(
    preset: str,
    preset_file: str | None = None,
    until: str | None = None,
    force: list[str] | None = None,
    overrides: BaseModel | dict[str, Any] | None = None,
) -> str:
    """A flow run's name from its parameters: `tiny→ppo force=sft +2 overrides`, readable in the run list."""
    name = _file_stem(preset_file) if preset_file else str(preset)
    if until and until != STAGES[-1]:  # up to the last stage is the whole route
        name += f"→{until}"
    if force:
        name += f" force={','.join(force)}"
    count = _leaf_count(overrides_dict(overrides))
    if count:
        name += f" +{count} override{'s' if count > 1 else ''}"
    return name


def _file_stem(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _leaf_count(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_leaf_count(value) for value in tree.values())
    return 1
