"""The directory: areas, grids, households, persons and devices, imported from and exported to
CSV files (``docs/directory.md``)."""

from dispatcher.directory.exporter import ExportReport, export_directory
from dispatcher.directory.importer import import_directory
from dispatcher.directory.protocol import DirectoryReader, DirectoryWriter
from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.directory.report import FileReport, ImportReport, RowError

__all__ = [
    "AreaRecord",
    "DeviceRecord",
    "DirectoryReader",
    "DirectoryWriter",
    "ExportReport",
    "FileReport",
    "GridRecord",
    "HouseholdRecord",
    "ImportReport",
    "PersonRecord",
    "RowError",
    "export_directory",
    "import_directory",
]
