"""Operators' reports: a warning's coverage as CSV and as a printable summary
(:mod:`.coverage_report`), the door-to-door follow-up list by grid member (:mod:`.followup`)
and a test broadcast's report with its maintenance list (:mod:`.test_report`).
docs/reports.md is the manual."""
