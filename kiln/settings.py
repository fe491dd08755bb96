"""Settings declared once: a dataclass field carries its default, its key, its help and how a raw value is parsed.

    samples: int | None = setting(None, key="calib_samples", parse=int, help="Use this many ...")

The key is the setting's name in kiln.toml; its command-line flag is the key with dashes (--calib-samples)
unless `flag` spells it otherwise (--input-shape, or --int8: a switch for one raw value). `click_options`
generates the click options from the fields, `from_raw` reads flag values or a kiln.toml table into the typed
dataclass, `toml_keys` lists what kiln.toml accepts. A field marked build=False says where to work, not what
to build: fingerprints leave it out (`part_of_the_build`).

Library errors about settings are `SettingError`s whose messages name fields as {field}: read from Python
they say `max_accuracy_drop`; the CLI shows them as flags (`as_flags`) and kiln.toml as keys (`as_keys`).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping

from kiln.errors import SettingError

_META = "kiln.setting"


@dataclass(frozen=True)
class _Spec:
    key: str | None = None  # name in kiln.toml, and (dashed) on the command line; None: library only
    help: str = ""
    parse: Callable[[Any], Any] | None = None  # raw value (a flag's or kiln.toml's) -> the field's type
    kind: str = "value"  # "value", "flag" (a boolean switch) or "multiple" (a repeatable option / a list)
    path: bool = False  # a path: kiln.toml gives it relative to its own folder
    build: bool = True  # False: where to work, not what to build; left out of fingerprints
    group: bool = False  # the field is a dataclass of settings of its own
    flag: str | None = None  # the command-line spelling when it is not --KEY
    short: str | None = None  # a one-letter alias on the command line (-t)
    switch: Any = None  # the flag is a switch that gives this raw value (--int8: "int8")
    item: Callable[[str], Any] | None = None  # parses one command-line value; a ValueError is a usage error
    metavar: str | None = None  # how --help shows the value (NAME:DIMS)
    raw_default: Any = None  # the raw value taken when none is given, for a field the library requires (target)
    toml: bool = True  # False: a command-line option only (compile's --output)


def setting(default: Any = dataclasses.MISSING, *, key: str | None = None, help: str = "",
            parse: Callable[[Any], Any] | None = None, kind: str = "value", path: bool = False,
            build: bool = True, flag: str | None = None, short: str | None = None, switch: Any = None,
            item: Callable[[str], Any] | None = None, metavar: str | None = None, raw_default: Any = None,
            toml: bool = True, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is also a setting; see the module docstring."""
    spec = _Spec(key, help, parse, kind, path, build, False, flag, short, switch, item, metavar, raw_default, toml)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_META: spec})
    return dataclasses.field(default=default, metadata={_META: spec})


def group(cls: type) -> Any:
    """A field holding a dataclass of settings (with their defaults); its keys are read as this dataclass's own."""
    return dataclasses.field(default=cls(), metadata={_META: _Spec(group=True)})


def boolean(value: Any) -> bool:
    """A kiln.toml true/false (a string like "yes" is refused rather than read as true)."""
    if not isinstance(value, bool):
        raise ValueError("give true or false")
    return value


def part_of_the_build(field: dataclasses.Field) -> bool:
    return _spec(field).build


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def flag_of(spec: _Spec) -> str:
    return spec.flag or flag(spec.key)


def keys(cls: type, only: Collection[str] | None = None) -> list[str]:
    """The keys of cls's settings (its groups' included), in declaration order; only: these keys."""
    return [spec.key for _, _, spec in _keyed(cls) if only is None or spec.key in only]


def toml_keys(cls: type) -> list[str]:
    """The keys of cls's settings that kiln.toml accepts."""
    return [spec.key for _, _, spec in _keyed(cls) if spec.toml]


def flags(cls: type, only: Collection[str] | None = None) -> list[str]:
    """The command-line flags of cls's settings, in declaration order."""
    return [flag_of(spec) for _, _, spec in _keyed(cls) if only is None or spec.key in only]


def raw_defaults(cls: type) -> dict[str, Any]:
    """Each setting's default in raw form (what its flag or key would be given); None where the field has no
    default and no raw_default (the library requires it)."""
    return {spec.key: _raw(field.default) if spec.raw_default is None else spec.raw_default
            for _, field, spec in _keyed(cls)}


def from_raw(cls: type, raw: Mapping[str, Any], root: Path | None = None) -> Any:
    """cls from raw values by key; a missing or None value takes the field's default. root: the folder that
    relative paths are relative to (kiln.toml's); unknown keys are the caller's to check, against `keys`."""
    values = {}
    for field in dataclasses.fields(cls):
        spec = _spec(field)
        if spec.group:
            values[field.name] = from_raw(type(field.default), raw, root)
        elif spec.key and (value := _given(raw.get(spec.key), spec)) is not None:
            try:
                if spec.path and root is not None:
                    value = root / value
                values[field.name] = spec.parse(value) if spec.parse else value
            except (TypeError, ValueError) as exc:
                shown = str(value) if isinstance(value, Path) else repr(value)
                reason = _choices(spec.parse) or exc
                raise SettingError(cls, f"{{{field.name}}} {shown}: {reason}") from None
    return cls(**values)


def _given(value: Any, spec: _Spec) -> Any:
    """The raw value, or the setting's raw default when none was given (None, or an empty repeated option)."""
    return spec.raw_default if value is None or (spec.kind == "multiple" and value == ()) else value


def _choices(parse: Any) -> str | None:
    if isinstance(parse, type) and issubclass(parse, enum.Enum):
        return "use " + " or ".join(member.value for member in parse)
    return None


def _raw(default: Any) -> Any:
    if default is dataclasses.MISSING:
        return None
    return default.value if isinstance(default, enum.Enum) else default


def as_flags(error: SettingError) -> str:
    """The error's message with its settings named as command-line flags."""
    return error.spelled(lambda name: _spelling(error.owner, name, flag_of))


def as_keys(error: SettingError) -> str:
    """The error's message with its settings named as kiln.toml keys."""
    return error.spelled(lambda name: _spelling(error.owner, name, lambda spec: spec.key))


def click_options(cls: type, only: Collection[str] | None = None) -> list[Callable]:
    """One click option per keyed setting (only: these keys), named by its key, with the field's default in raw
    form (from_raw reads None, an empty multiple option or an unset flag as the field's default)."""
    import click

    options = []
    for _, _, spec in _keyed(cls):
        if only is not None and spec.key not in only:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": spec.help}
        if spec.switch is not None:
            kwargs["flag_value"] = spec.switch
        elif spec.kind == "flag":  # on by default: --KEY/--no-KEY
            on = raw_defaults(cls)[spec.key] is True
            kwargs.update(is_flag=True, default=on, show_default=on)
        elif spec.kind == "multiple":
            kwargs["multiple"] = True
        if spec.item:
            kwargs["type"] = _item_type(spec)
        elif _choices(spec.parse) and spec.switch is None:
            kwargs["type"] = click.Choice([member.value for member in spec.parse])
        elif spec.path:
            kwargs["type"] = click.Path(path_type=Path)
        elif spec.parse in (int, float):
            kwargs["type"] = spec.parse
        default = raw_defaults(cls)[spec.key]
        if spec.switch is None and not (default is None or default is False or default in ((), frozenset())):
            kwargs.update(default=default, show_default=True)
        names = [flag_of(spec)] + ([spec.short] if spec.short else [])
        if spec.kind == "flag" and kwargs["default"] is True:
            names[0] += "/--no-" + spec.key.replace("_", "-")
        options.append(click.option(*names, spec.key, **kwargs))
    return options


def _item_type(spec: _Spec) -> Any:
    """A click type that parses one command-line value with spec.item (a ValueError is a usage error, exit 2)."""
    import click

    class Item(click.ParamType):
        name = spec.metavar or "VALUE"

        def convert(self, value, param, ctx):
            if not isinstance(value, str):
                return value
            try:
                return spec.item(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)

    return Item()


def _keyed(cls: type) -> Iterator[tuple[type, dataclasses.Field, _Spec]]:
    for field in dataclasses.fields(cls):
        spec = _spec(field)
        if spec.group:
            yield from _keyed(type(field.default))
        elif spec.key:
            yield cls, field, spec


def _spelling(owner: type, name: str, spell: Callable[[_Spec], str]) -> str:
    field = next((f for f in dataclasses.fields(owner) if f.name == name), None)
    spec = _spec(field) if field else None
    if spec is None or not spec.key:
        return name
    return spell(spec)


def _spec(field: dataclasses.Field) -> _Spec:
    return field.metadata.get(_META, _Spec())
