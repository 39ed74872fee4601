"""What an import did: per file, rows read, imported and skipped, and every bad row."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Errors kept per file; all of them are counted.
MAX_STORED_ERRORS = 1000


@dataclass(frozen=True, slots=True)
class RowError:
    file: str
    #: 1-based physical line where the row starts; the header is line 1.
    line: int
    #: The column at fault; empty for problems with the whole row or file.
    column: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.column}: {self.message}" if self.column else f"{where}: {self.message}"
        )


@dataclass(slots=True)
class FileReport:
    file: str
    #: False when the file is not in the folder (nothing to import, not an error).
    found: bool = True
    rows_read: int = 0
    imported: int = 0
    error_count: int = 0
    #: The first :data:`MAX_STORED_ERRORS` errors, in line order.
    errors: list[RowError] = field(default_factory=list)
    #: Whether the file was applied to the store (False: nothing imported). A file is applied
    #: only when it had no errors, or with skip_bad_rows.
    committed: bool = False
    seconds: float = 0.0
    #: The write transactions the file was applied in (rows, then derived rows): how many, and
    #: the longest and total seconds each held the store's write lock.
    write_transactions: int = 0
    longest_write: float = 0.0
    write_seconds: float = 0.0
    #: Wall-clock seconds of applying the file (part of ``seconds``), pauses included.
    apply_seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.rows_read - self.imported

    def add_error(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(error)

    def add_write(self, seconds: float) -> None:
        self.write_transactions += 1
        self.write_seconds += seconds
        self.longest_write = max(self.longest_write, seconds)

    def summary(self) -> str:
        if not self.found:
            return f"{self.file}: not present"
        outcome = "imported" if self.committed else "NOT imported"
        return (
            f"{self.file}: {outcome}: {self.rows_read} rows read, {self.imported} imported, "
            f"{self.skipped} skipped, {self.error_count} errors in {self.seconds:.1f} s"
        )


@dataclass(slots=True)
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No file had an error."""
        return all(f.error_count == 0 for f in self.files)

    @property
    def error_count(self) -> int:
        return sum(f.error_count for f in self.files)

    @property
    def longest_write(self) -> float:
        """Seconds of the longest write transaction of the whole import."""
        return max((f.longest_write for f in self.files), default=0.0)

    def file(self, name: str) -> FileReport:
        for report in self.files:
            if report.file == name:
                return report
        raise KeyError(name)

    def summary(self) -> str:
        return "\n".join(report.summary() for report in self.files)

    def __str__(self) -> str:
        """The summary, then every kept error (what the CLI prints)."""
        lines = [self.summary()]
        for report in self.files:
            lines.extend(str(error) for error in report.errors)
            if report.error_count > len(report.errors):
                lines.append(f"{report.file}: … and {report.error_count - len(report.errors)} more")
        return "\n".join(lines)
