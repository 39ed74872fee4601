"""Reading untrusted XML: defusedxml only, no DTDs, no entities, bounded size and depth, and
the line each element starts on (ElementTree forgets it; error messages need it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.parsers.expat import ErrorString

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from dispatcher.cap.errors import CapError

#: A CAP message with the 5,000 area codes a warning may carry is about 1 MB.
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
#: CAP nests five deep (alert/info/area/geocode/value); an XML signature a few more. Refusing
#: deep documents while parsing keeps recursive code downstream (xmlschema) safe.
MAX_DEPTH = 32


@dataclass(slots=True)
class XmlDocument:
    root: Element
    _lines: dict[int, int] = field(repr=False)

    def line_of(self, element: Element) -> int | None:
        """The line the element's start tag is on, if the element belongs to this document."""
        return self._lines.get(id(element))


class _LineRecordingBuilder:
    """An ElementTree parser target that notes each element's line and bounds the depth."""

    def __init__(self) -> None:
        self._builder = TreeBuilder()
        self._depth = 0
        self.lines: dict[int, int] = {}
        self.expat: object | None = None  # the expat parser, for CurrentLineNumber

    def current_line(self) -> int | None:
        line = getattr(self.expat, "CurrentLineNumber", None)
        return line if isinstance(line, int) else None

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise CapError(
                f"XML is nested deeper than {MAX_DEPTH} elements; a CAP message is not",
                line=self.current_line(),
            )
        element = self._builder.start(tag, attrs)
        line = self.current_line()
        if line is not None:
            self.lines[id(element)] = line
        return element

    def end(self, tag: str) -> Element:
        self._depth -= 1
        return self._builder.end(tag)

    def data(self, text: str) -> None:
        self._builder.data(text)

    def close(self) -> Element:
        return self._builder.close()


def read_xml(body: bytes) -> XmlDocument:
    """Parse untrusted bytes into an element tree, or raise :class:`CapError`."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise CapError(f"the message is {len(body)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
    builder = _LineRecordingBuilder()
    parser = DefusedXMLParser(
        target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    builder.expat = getattr(parser, "parser", None)  # pure-Python XMLParser keeps expat here
    try:
        parser.feed(body)
        root = parser.close()
    except DTDForbidden as exc:
        raise CapError(
            "a document type declaration (DOCTYPE/DTD) is forbidden in CAP messages: "
            "entities and external references are never expanded",
            line=builder.current_line(),
        ) from exc
    except EntitiesForbidden as exc:
        raise CapError(
            "entity declarations are forbidden in CAP messages", line=builder.current_line()
        ) from exc
    except ExternalReferenceForbidden as exc:
        raise CapError(
            "external references are forbidden in CAP messages", line=builder.current_line()
        ) from exc
    except ParseError as exc:
        line, column = exc.position
        raise CapError(
            f"not well-formed XML: {ErrorString(exc.code)}", line=line, column=column
        ) from exc
    if not isinstance(root, Element):
        raise CapError("not an XML document")
    return XmlDocument(root, builder.lines)
