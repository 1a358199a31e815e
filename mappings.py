"""Which mapping a job's lines go through: a built-in format by name, a custom definition, or
`auto`, which picks per line the format `formats.detect` recognises and hands the lines none
recognises to the generic mapping (generic_format.py). Above both modules, so neither needs
the other's chooser."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import formats
import generic_format


class UnknownFormat(ValueError):
    """A job names a format that is neither built in nor `auto`."""


def compile_format(
    name: str,
    default_service: str | None = None,
    default_environment: str | None = None,
    definition: Mapping | None = None,
) -> Callable[[Any], formats.Mapped]:
    """The mapping for a job: built once, then called for every line. `definition` is the
    custom format named `name`, as its owner registered it."""
    if definition is not None:
        return formats.FormatMapper(
            formats.custom_format(definition), default_service, default_environment
        )
    if name == formats.AUTO:
        return AutoMapper(default_service, default_environment)
    if name == formats.GENERIC:
        return generic_format.GenericMapper(default_service, default_environment)
    if name == formats.CANONICAL:
        return formats.CanonicalMapper(default_service, default_environment)
    if name in formats.FORMATS:
        return formats.FormatMapper(formats.FORMATS[name], default_service, default_environment)
    raise UnknownFormat(f"unknown log format {name!r}: one of {', '.join(formats.NAMES)}")


class AutoMapper:
    """`auto`: each line is mapped by the format `detect` recognises in it."""

    def __init__(self, default_service: str | None, default_environment: str | None):
        self.canonical = formats.CanonicalMapper(default_service, default_environment)
        self.mappers: dict[str, Callable[[Any], formats.Mapped]] = {
            name: formats.FormatMapper(f, default_service, default_environment)
            for name, f in formats.FORMATS.items()
        }
        self.mappers[formats.GENERIC] = generic_format.GenericMapper(
            default_service, default_environment
        )

    def __call__(self, obj) -> formats.Mapped:
        if type(obj) is not dict:
            return self.canonical(obj)  # the schema says why it is not an entry
        name = formats.detect(obj)
        return self.canonical(obj) if name == formats.CANONICAL else self.mappers[name](obj)
