"""The CAP 1.2 XML schema: loaded once, lazily, from package data; never from the network."""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

import xmlschema

from dispatcher.cap.errors import CapError

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
_XSD_NAME = "CAP-v1.2.xsd"
_CLARK_PREFIX = re.compile(r"\{[^}]*\}")
_DATETIME_ELEMENTS = frozenset({"sent", "effective", "onset", "expires"})


def cap_tag(local_name: str) -> str:
    """The ElementTree (Clark notation) tag of a CAP 1.2 element."""
    return f"{{{CAP_NAMESPACE}}}{local_name}"


@functools.cache
def cap_schema() -> Any:
    """The compiled CAP 1.2 schema (an ``xmlschema.XMLSchema``).

    It is read from the packaged XSD as text, with ``allow="none"`` so that neither the schema
    nor any instance validated against it can make xmlschema open a file or a URL."""
    xsd_text = importlib.resources.files("dispatcher.cap").joinpath(_XSD_NAME).read_text("utf-8")
    return xmlschema.XMLSchema(xsd_text, allow="none", defuse="always")


def validate_alert(root: Element, line_of: Callable[[Element], int | None]) -> None:
    """Raise :class:`CapError` naming the first schema violation in an already parsed tree."""
    # The Element (not bytes) goes to xmlschema: it must not parse, and location hints in the
    # message (xsi:schemaLocation) are not followed.
    errors = cap_schema().iter_errors(root, use_location_hints=False)
    error = next(errors, None)
    if error is None:
        return
    path = _CLARK_PREFIX.sub("", str(error.path or "")).lstrip("/")
    elem = error.elem if isinstance(error.elem, Element) else None
    if path.rsplit("/", 1)[-1] in _DATETIME_ELEMENTS and elem is not None:
        # xmlschema's own words here are a regular expression; say what is expected instead.
        reason = (
            f"{(elem.text or '').strip()!r} is not a CAP dateTime: write it like "
            "2024-07-01T08:00:00+08:00 (UTC as -00:00, never Z)"
        )
    else:
        reason = _CLARK_PREFIX.sub("", str(error.reason or error.message or "invalid"))
        reason = reason.replace("'cap:", "'")
    raise CapError(
        f"CAP 1.2 schema violation at /{path}: {reason}",
        field=path or None,
        line=_line_of_culprit(elem, getattr(error, "index", None), line_of),
    )


def _line_of_culprit(
    elem: Element | None, child_index: object, line_of: Callable[[Element], int | None]
) -> int | None:
    """The unexpected child's line when xmlschema names one by index, else the element's."""
    if elem is None:
        return None
    if isinstance(child_index, int) and 0 <= child_index < len(elem):
        return line_of(elem[child_index])
    return line_of(elem)
