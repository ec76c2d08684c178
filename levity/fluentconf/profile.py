"""Loading a YAML profile: `extends`, schema validation, semantic checks, readable errors.

Every problem becomes a ProfileError naming the file, the key path (`outputs[2].buffer.path`),
what was found and what was expected. Nothing is rendered from an invalid profile.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from levity.fluentconf import schema
from levity.fluentconf.sizing import apply_sizing, total_disk
from levity.fluentconf.units import (duration_seconds, has_tag_placeholder, has_time_placeholder, size_bytes,
                                     tag_pattern_covers, time_granularity)
from levity.resources import resource_dir

SHIPPED_NAME = r"^[a-z][a-z0-9_-]*$"
NAMED_LISTS = ("filters", "outputs")  # merged by `name` under `extends`; other lists are replaced


class ProfileError(ValueError):
    """An invalid profile: str() is `FILE: KEY.PATH: found X; expected Y` (one line per problem)."""

    def __init__(self, file: str, key_path: str, found: str, expected: str,
                 more: list["ProfileError"] | None = None) -> None:
        self.file = file
        self.key_path = key_path or "(top level)"
        self.found = found
        self.expected = expected
        self.more = list(more or [])
        super().__init__(str(self))

    def line(self) -> str:
        return f"{self.file}: {self.key_path}: found {self.found}; expected {self.expected}"

    def __str__(self) -> str:
        return "\n".join([self.line()] + [problem.line() for problem in self.more])

    @property
    def problems(self) -> list["ProfileError"]:
        return [self] + self.more


@dataclass
class Profile:
    """A validated profile, ready to render."""

    name: str                      # e.g. "production" (the file name without .yaml)
    label: str                     # e.g. "profiles/production.yaml": relative, for headers/errors
    chain: tuple[str, ...]         # the profiles it extends, nearest first
    doc: schema.ProfileDoc
    filters: list[schema.FilterBase] = field(default_factory=list)
    outputs: list[schema.OutputBase] = field(default_factory=list)

    @property
    def description(self) -> str:
        return self.doc.description

    def output(self, name: str) -> schema.OutputBase:
        return next(output for output in self.outputs if output.name == name)


# --------------------------------------------------------------------------------------- loading

class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def profiles_dir() -> Path:
    return resource_dir("profiles")


def label_for(path: Path) -> str:
    """A stable, relative name for a profile file (never an absolute path)."""
    try:
        resolved = path.resolve()
        shipped = profiles_dir().resolve()
        if resolved.parent == shipped:
            return f"profiles/{resolved.name}"
    except OSError:
        pass
    if path.is_absolute():
        return path.name
    return path.as_posix()


def find_profile(spec: str | Path) -> Path:
    """A path to an existing file, or the shipped profile of that name. FileNotFoundError if neither."""
    path = Path(spec)
    if path.is_file():
        return path
    import re

    if isinstance(spec, str) and re.match(SHIPPED_NAME, spec):
        shipped = profiles_dir() / f"{spec}.yaml"
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(f"no profile file {str(spec)!r} and no shipped profile of that name "
                            f"(see `levity fluentd profiles`)")


def _read_yaml(path: Path, label: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(label, "", f"an unreadable file ({exc.strerror})", "a readable YAML file") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the document"
        raise ProfileError(label, where, str(exc.problem or exc.context), "valid YAML") from None
    except yaml.YAMLError as exc:
        raise ProfileError(label, "", str(exc), "valid YAML") from None
    if not isinstance(data, dict):
        raise ProfileError(label, "", _describe(data), "a mapping with description, outputs, routes, ...")
    return data


def _merge(base: Any, child: Any, top: bool = False) -> Any:
    if isinstance(base, dict) and isinstance(child, dict):
        merged = dict(base)
        for key, value in child.items():
            if value is None:
                merged.pop(key, None)  # `key: null` in a child removes what the base said
            elif key in merged and top and key in NAMED_LISTS:
                merged[key] = _merge_named(merged[key], value)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
        return merged
    return child


def _merge_named(base: Any, child: Any) -> Any:
    if not (isinstance(base, list) and isinstance(child, list)):
        return child
    if not all(isinstance(item, dict) and "name" in item for item in base + child):
        return child
    merged = list(base)
    index = {item["name"]: i for i, item in enumerate(merged)}
    for item in child:
        if item["name"] in index:
            i = index[item["name"]]
            if item.get("type", merged[i].get("type")) != merged[i].get("type"):
                merged[i] = item  # a different plugin: replace, do not mix parameters
            else:
                merged[i] = _merge(merged[i], item)
        else:
            index[item["name"]] = len(merged)
            merged.append(item)
    return merged


def _load_raw(path: Path, label: str, seen: tuple[Path, ...]) -> tuple[dict, tuple[str, ...]]:
    data = _read_yaml(path, label)
    parent = data.get("extends")
    if parent is None:
        return data, ()
    if not isinstance(parent, str) or not parent:
        raise ProfileError(label, "extends", _describe(parent), "a shipped profile name or a path to a YAML file")
    candidate = (path.parent / parent) if ("/" in parent or parent.endswith((".yaml", ".yml"))) else None
    if candidate is None:
        candidate = profiles_dir() / f"{parent}.yaml"
    if not candidate.is_file():
        raise ProfileError(label, "extends", repr(parent),
                           "the name of a shipped profile (see `levity fluentd profiles`) or a path "
                           "relative to this file")
    if candidate.resolve() in seen:
        raise ProfileError(label, "extends", repr(parent), "a profile that does not extend itself (cycle)")
    base, chain = _load_raw(candidate, label_for(candidate), seen + (candidate.resolve(),))
    child = {key: value for key, value in data.items() if key != "extends"}
    return _merge(base, child, top=True), (Path(parent).stem,) + chain


def load_profile(path: str | Path) -> Profile:
    """Read, merge (`extends`), validate and check a profile file. Raises ProfileError."""
    path = Path(path)
    header_label = label_for(path)  # relative: rendered into the header, stable for golden files
    label = header_label if header_label.startswith("profiles/") else str(path)  # errors: as given
    raw, chain = _load_raw(path, label, (path.resolve(),))
    raw.pop("extends", None)
    problems: list[ProfileError] = []
    doc = None
    filters: list = []
    outputs: list = []
    try:
        doc = schema.ProfileDoc.model_validate(raw)
    except ValidationError as exc:
        problems += _translate(exc, label, [], schema.ProfileDoc).problems
    for key, types_ in (("filters", schema.FILTER_TYPES), ("outputs", schema.OUTPUT_TYPES)):
        items = raw.get(key)
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            continue  # reported by the document schema
        try:
            parsed = _typed_items(items, key, types_, label)
        except ProfileError as exc:
            problems += exc.problems
        else:
            filters, outputs = (parsed, outputs) if key == "filters" else (filters, parsed)
    if problems:
        raise _combine(problems)
    profile = Profile(name=path.stem, label=header_label, chain=chain, doc=doc, filters=filters, outputs=outputs)
    _apply_sizing(profile, label)
    _check(profile, raw, label)
    return profile


def _apply_sizing(profile: Profile, label: str) -> None:
    """Buffer limits from `sizing` (levity/fluentconf/sizing.py), checked against sizing.max_disk."""
    sizing = profile.doc.sizing
    applied = apply_sizing(profile.outputs, sizing)
    if not applied or sizing.max_disk is None:
        return
    needed = total_disk(profile.outputs)
    if needed > size_bytes(sizing.max_disk):
        parts = ", ".join(f"{o.name} {o.buffer.total_limit_size}" for o in profile.outputs
                          if o.buffer is not None and o.buffer.type == "file" and o.buffer.total_limit_size)
        raise ProfileError(label, "sizing.max_disk", f"{sizing.max_disk}, less than the {needed // (1 << 20)}m the "
                           f"file buffers need ({parts})", "at least that much disk, or a lower sizing.rate, "
                           "sizing.survive or sizing.event_size")


def _typed_items(items: list[dict], key: str, types_: dict[str, type[BaseModel]], label: str) -> list:
    result, problems = [], []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind not in types_:
            found = "no type" if kind is None else repr(kind)
            problems.append(ProfileError(label, f"{key}[{i}].type", found,
                                         "one of " + ", ".join(sorted(types_))))
            continue
        try:
            result.append(types_[kind].model_validate(item))
        except ValidationError as exc:
            problems.extend(_translate(exc, label, [key, i], types_[kind]).problems)
    if problems:
        raise _combine(problems)
    return result


# ------------------------------------------------------------------------------ error translation

def _combine(problems: list[ProfileError]) -> ProfileError:
    first = problems[0]
    return ProfileError(first.file, first.key_path, first.found, first.expected, problems[1:])


def key_path(loc: list | tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return ("a mapping with keys " + ", ".join(map(str, value))) if value else "an empty mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes reachable through Optional/Annotated/list/dict of an annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict):
        found = []
        for arg in typing.get_args(annotation):
            found += _unwrap(arg)
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(model: type[BaseModel], loc: list) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        info = current.model_fields.get(part)
        if info is None:
            return current if part not in ("[key]",) else current
        candidates = _unwrap(info.annotation)
        current = candidates[0] if candidates else None
    return current


def _translate(exc: ValidationError, label: str, prefix: list, model: type[BaseModel]) -> ProfileError:
    problems = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not (isinstance(part, str) and (
            part.startswith("function-") or part in ("[key]",)))]
        kind = error["type"]
        message = error["msg"]
        value = error.get("input")
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "a known key"
            found, expected = f"unknown key {loc[-1]!r}", f"one of: {allowed}"
        elif kind == "missing":
            found, expected = "nothing", f"a value for the required key {loc[-1]!r}"
        elif kind == "literal_secret":
            found, expected = "a literal secret (value not shown)", message.removeprefix("expected ")
        elif kind == "string_pattern_mismatch":
            found, expected = _describe(value), f"a value matching {error['ctx']['pattern']}"
        else:
            found = _describe(value)
            expected = message.removeprefix("Value error, ").removeprefix("Input should be ")
            expected = expected.removeprefix("expected ")
        problems.append(ProfileError(label, key_path(prefix + loc), found, expected))
    return _combine(problems)


# -------------------------------------------------------------------------------- semantic checks


def _check(profile: Profile, raw: dict, label: str) -> None:
    problems: list[ProfileError] = []

    def problem(path: str, found: str, expected: str) -> None:
        problems.append(ProfileError(label, path, found, expected))

    names: dict[str, int] = {}
    for i, output in enumerate(profile.outputs):
        if output.name in names:
            problem(f"outputs[{i}].name", f"{output.name!r} (already the name of outputs[{names[output.name]}])",
                    "a unique output name")
        else:
            names[output.name] = i
    filter_names: dict[str, int] = {}
    for i, filt in enumerate(profile.filters):
        if filt.name in filter_names:
            problem(f"filters[{i}].name", f"{filt.name!r} (already the name of filters[{filter_names[filt.name]}])",
                    "a unique filter name")
        filter_names.setdefault(filt.name, i)

    used: set[str] = set()
    routes = profile.doc.routes
    for r, route in enumerate(routes):
        for k, name in enumerate(route.outputs):
            used.add(name)
            if name not in names:
                problem(f"routes[{r}].outputs[{k}]", repr(name),
                        "the name of a defined output (" + ", ".join(sorted(names)) + ")")
        for earlier in range(r):
            if tag_pattern_covers(routes[earlier].match, route.match):
                problem(f"routes[{r}].match",
                        f"{route.match!r}, already caught by routes[{earlier}] ({routes[earlier].match!r})",
                        "specific patterns before general ones: the first matching <match> wins")
                break
    for name, i in names.items():
        if name not in used:
            problem(f"outputs[{i}].name", f"{name!r}, which no route sends events to",
                    "every output to be used by a route (remove it or add it to a route)")

    buffer_paths: dict[str, str] = {}
    secondary_dirs: dict[str, str] = {}
    directories = profile.doc.directories
    for i, output in enumerate(profile.outputs):
        where = f"outputs[{i}]"
        if output.NEEDS_BUFFER and output.buffer is None:
            problem(f"{where}.buffer", "nothing",
                    f"a buffer section for {output.type} (its default buffer has a time chunk key)")
        buffer = output.buffer
        if buffer is not None and buffer.type == "file":
            if buffer.path is None:
                buffer.path = f"{directories.buffers}/{output.name}"
            if buffer.path in buffer_paths:
                problem(f"{where}.buffer.path", f"{buffer.path!r}, also the buffer path of {buffer_paths[buffer.path]}",
                        "a buffer path used by one output only (Fluentd refuses to share it)")
            buffer_paths.setdefault(buffer.path, where)
        if output.type == "elasticsearch":
            # fluent-plugin-elasticsearch warns below 2 flush threads ("traffic jam").
            if buffer is None:
                output.buffer = buffer = schema.Buffer(flush_thread_count=2)
            elif buffer.flush_thread_count is None:
                buffer.flush_thread_count = 2
        if output.secondary is not None and buffer is not None and buffer.retry_forever:
            problem(f"{where}.secondary", "a secondary with buffer.retry_forever: true",
                    "retry_timeout (or retry_max_times) with a secondary: while retrying forever "
                    "only unrecoverable errors reach the secondary (Fluentd warns about it)")
        if output.secondary is not None:
            if output.secondary.directory is None:
                output.secondary.directory = f"{directories.failed}/{output.name}"
            directory = output.secondary.directory
            if directory in secondary_dirs:
                problem(f"{where}.secondary.directory", f"{directory!r}, also used by {secondary_dirs[directory]}",
                        "a directory per output")
            secondary_dirs.setdefault(directory, where)
        if output.PATH_FIELD and buffer is not None:
            _check_placeholders(output, where, problem)

    if problems:
        raise _combine(problems)


def _check_placeholders(output: schema.OutputBase, where: str, problem) -> None:
    """The rules Fluentd applies to ${tag} and strftime placeholders in a buffered output's path."""
    field_name = output.PATH_FIELD
    value = getattr(output, field_name)
    buffer = output.buffer
    keys = buffer.chunk_keys
    path = f"{where}.{field_name}"
    if has_tag_placeholder(value) and "tag" not in keys:
        problem(path, f"a ${{tag}} placeholder in {value!r} with buffer.chunk_keys {keys}",
                "'tag' in buffer.chunk_keys (Fluentd cannot fill ${tag} otherwise)")
    if "${" in value.replace("${tag}", ""):
        problem(path, repr(value), "no placeholders other than ${tag} and strftime ones (%Y, %m, %d, %H)")
    granularity = time_granularity(value)
    if has_time_placeholder(value) and "time" not in keys:
        problem(path, f"time placeholders in {value!r} with buffer.chunk_keys {keys}",
                "'time' in buffer.chunk_keys, with a timekey")
    elif granularity and buffer.timekey and duration_seconds(buffer.timekey) < granularity:
        problem(f"{where}.buffer.timekey", f"{buffer.timekey!r}, shorter than the finest placeholder in {value!r}",
                f"a timekey of at least {granularity}s, or a finer placeholder in {field_name}")
    if output.type == "file":
        # out_file validates both directions: a chunk key needs its placeholder in the path.
        if "tag" in keys and not has_tag_placeholder(value):
            problem(path, f"{value!r} without ${{tag}} while buffer.chunk_keys has 'tag'",
                    "${tag} in the path (one file per tag) or no 'tag' chunk key")
        if "time" in keys and granularity is None:
            problem(path, f"{value!r} without a day/hour placeholder while buffer.chunk_keys has 'time'",
                    "a time placeholder such as %Y-%m-%d in the path")
