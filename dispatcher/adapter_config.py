"""Adapter instances from the config: each ``[adapters.<name>]`` resolved to its kind (through
the ``tocsin.adapters`` entry points) and its settings validated by that kind's model.

Settings fields typed :class:`pydantic.SecretStr` take a secret reference (``env:``, ``file:``,
``credential:``), resolved here so a secret is never written into a config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from dispatcher.adapter import Adapter, AdapterFactory, PacesItself, adapter_kinds
from dispatcher.config import AdapterInstanceConfig, format_loc
from dispatcher.domain import Channel
from dispatcher.secrets import SecretError, resolve_secret


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One configured adapter instance, ready to construct."""

    name: str
    factory: AdapterFactory
    config: AdapterInstanceConfig
    settings: BaseModel
    channels: frozenset[Channel]

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size or self.factory.max_batch, self.factory.max_batch)

    def create(self) -> Adapter:
        return self.factory(name=self.name, settings=self.settings)

    def send_rate(self, adapter: Adapter) -> tuple[float | None, int | None]:
        """The rate and burst the engine keeps this instance to: the configured ones, made
        stricter by what the adapter says its provider allows (:class:`PacesItself`)."""
        rate, burst = self.config.rate_per_second, self.config.burst
        own = adapter.send_rate() if isinstance(adapter, PacesItself) else None
        if own is None:
            return rate, burst
        if rate is None or own.per_second < rate:
            rate = own.per_second
            burst = own.burst if burst is None else min(burst, own.burst)
        return rate, burst


def _secret_fields(model: type[BaseModel]) -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ()):
            out.add(name)
    return out


def build_adapter_specs(
    config_path: Path,
    instances: Mapping[str, AdapterInstanceConfig],
    base_dir: Path,
    *,
    kinds: Mapping[str, AdapterFactory] | None = None,
) -> tuple[tuple[AdapterSpec, ...], list[str]]:
    """The specs and the problems found, each as ``file: adapters.<name>.<key>: what``."""
    known = dict(adapter_kinds() if kinds is None else kinds)
    specs: list[AdapterSpec] = []
    problems: list[str] = []
    for name, instance in instances.items():
        where = f"{config_path}: adapters.{name}"
        factory = known.get(instance.kind)
        if factory is None:
            problems.append(
                f"{where}.kind: unknown adapter kind {instance.kind!r} "
                f"(installed: {', '.join(sorted(known)) or 'none'})"
            )
            continue
        channels = frozenset(instance.channels) or factory.channels
        extra = sorted(c.value for c in channels - factory.channels)
        if extra:
            problems.append(
                f"{where}.channels: kind {instance.kind} cannot serve {', '.join(extra)} "
                f"(it serves {', '.join(sorted(c.value for c in factory.channels))})"
            )
            continue
        raw: dict[str, Any] = dict(instance.settings)
        bad_secret = False
        for field_name in _secret_fields(factory.settings_model):
            value = raw.get(field_name)
            if isinstance(value, str):
                try:
                    raw[field_name] = resolve_secret(value, base_dir=base_dir)
                except SecretError as exc:
                    problems.append(f"{where}.settings.{field_name}: {exc}")
                    bad_secret = True
        if bad_secret:
            continue
        try:
            settings = factory.settings_model.model_validate(raw)
        except ValidationError as exc:
            for item in exc.errors(include_url=False, include_input=False):
                loc = format_loc(tuple(item["loc"]))
                msg = item["msg"].removeprefix("Value error, ")
                if item["type"] == "extra_forbidden":
                    msg = f"unknown setting for kind {instance.kind}"
                suffix = "" if loc == "(top level)" else ("" if loc.startswith("[") else ".") + loc
                problems.append(f"{where}.settings{suffix}: {msg}")
            continue
        needed = _send_time_needed(settings)
        if needed is not None and instance.send_timeout <= needed[0]:
            seconds, why = needed
            problems.append(
                f"{where}.send_timeout: {instance.send_timeout:g}s is too short for this "
                f"{instance.kind}: one send can take {seconds:g}s ({why}); set send_timeout "
                "above that, or the engine gives up on sends that then go out anyway and are "
                "sent again"
            )
            continue
        specs.append(AdapterSpec(name, factory, instance, settings, channels))
    return tuple(specs), problems


def _send_time_needed(settings: BaseModel) -> tuple[float, str] | None:
    """What a kind's settings say one ``send()`` may take, when they say (an optional
    ``send_time_needed()`` method of the settings model: seconds and why)."""
    method = getattr(settings, "send_time_needed", None)
    if not callable(method):
        return None
    needed = method()
    if needed is None:
        return None
    seconds, why = needed
    return float(seconds), str(why)
