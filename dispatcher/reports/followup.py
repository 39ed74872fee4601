"""The door-to-door follow-up list of a warning, grouped by grid member: its JSON (GET
/v1/warnings/{id}/followup), its CSV (one row per person of each unreached household, on each
of its grid members' sheets) and the sheets ``tocsin report followup`` prints — one per grid
member and village, in Chinese, to hand to the grid member.

A sheet lists the households of the member's grids in that village that the warning has not
reached in time (nobody in them acknowledged, no grid member confirmed a visit), with the people
in them and their phone numbers. Full numbers are given (the sheet is for calling and visiting
them); ``masked`` gives them as the unreached lists do (+86138****0001)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dispatcher.reports.text import china_time
from dispatcher.store.base import mask_phone
from dispatcher.store.reports_base import (
    FollowupHousehold,
    FollowupMember,
    FollowupPage,
    FollowupPerson,
    FollowupSheet,
)

#: The CSV's columns: the sheet (village, grid member), the grid, the household, the person.
FOLLOWUP_CSV_COLUMNS: tuple[str, ...] = (
    "village_code",
    "village_name",
    "grid_member_id",
    "grid_member_name",
    "grid_member_phone",
    "grid_member_acknowledged",
    "grid_id",
    "grid_name",
    "household_id",
    "address",
    "household_reached_late",
    "person_id",
    "person_name",
    "person_phone",
    "vulnerable",
    "lives_alone",
    "person_reached_late",
)


def _phone(phone: str | None, masked: bool) -> str | None:
    return mask_phone(phone) if masked else phone


def _member_view(member: FollowupMember | None, masked: bool) -> dict[str, Any] | None:
    if member is None:
        return None
    return {
        "id": member.id,
        "name": member.name,
        "phone": _phone(member.phone, masked),
        "acknowledged": member.acknowledged,
    }


def _person_view(person: FollowupPerson, masked: bool) -> dict[str, Any]:
    return {
        "id": person.id,
        "name": person.name,
        "phone": _phone(person.phone, masked),
        "vulnerable": person.vulnerable,
        "lives_alone": person.lives_alone,
        "reached_late": person.reached_late,
    }


def _household_view(household: FollowupHousehold, masked: bool) -> dict[str, Any]:
    return {
        "id": household.id,
        "address": household.address,
        "reached_late": household.reached_late,
        "persons": [_person_view(p, masked) for p in household.persons],
    }


def sheet_view(sheet: FollowupSheet, *, masked: bool = False) -> dict[str, Any]:
    return {
        "village_code": sheet.village_code,
        "village_name": sheet.village_name,
        "grid_member": _member_view(sheet.grid_member, masked),
        "households": sheet.households,
        "grids": [
            {
                "id": grid.id,
                "name": grid.name,
                "households": [_household_view(h, masked) for h in grid.households],
            }
            for grid in sheet.grids
        ],
    }


def followup_view(
    warning_id: str, area: str | None, page: FollowupPage, *, masked: bool = False
) -> dict[str, Any]:
    """GET /v1/warnings/{id}/followup."""
    return {
        "warning_id": warning_id,
        "area": area,
        "masked": masked,
        "sheets": [sheet_view(s, masked=masked) for s in page.sheets],
        "households": page.households,
        "next": page.next,
    }


def followup_csv_rows(sheets: Sequence[Mapping[str, Any]]) -> Iterator[list[Any]]:
    """The CSV's rows (after the header) for sheets in their JSON form: one per person of each
    household (a household without anyone in it: one row, the person's cells empty)."""
    for sheet in sheets:
        member = sheet.get("grid_member") or {}
        head = [
            sheet.get("village_code"),
            sheet.get("village_name"),
            member.get("id"),
            member.get("name"),
            member.get("phone"),
            member.get("acknowledged") if member else None,
        ]
        for grid in sheet.get("grids") or []:
            for household in grid.get("households") or []:
                where = [
                    grid.get("id"),
                    grid.get("name"),
                    household.get("id"),
                    household.get("address"),
                    household.get("reached_late"),
                ]
                persons = household.get("persons") or [None]
                for person in persons:
                    if person is None:
                        yield [*head, *where, None, None, None, None, None, None]
                        continue
                    yield [
                        *head,
                        *where,
                        person.get("id"),
                        person.get("name"),
                        person.get("phone"),
                        person.get("vulnerable"),
                        person.get("lives_alone"),
                        person.get("reached_late"),
                    ]


# -- the printed sheets (tocsin report followup) ----------------------------------------------


def _flags(person: Mapping[str, Any]) -> str:
    flags = [
        label
        for key, label in (
            ("vulnerable", "重点关注"),
            ("lives_alone", "独居"),
            ("reached_late", "失效后才确认"),
        )
        if person.get(key)
    ]
    return f"  [{'，'.join(flags)}]" if flags else ""


def format_followup_sheets(
    sheets: Sequence[Mapping[str, Any]],
    *,
    warning: Mapping[str, Any] | None = None,
    as_of: str | None = None,
) -> str:
    """One sheet per grid member and village, each starting with the warning it is for."""
    from dispatcher.reports.coverage_report import STATUS_MARKS

    head = ""
    if warning is not None:
        mark = STATUS_MARKS.get(str(warning.get("status")), "")
        head = f"{mark}{warning.get('headline', '')}（预警编号 {warning.get('id', '')}）"
    out: list[str] = []
    for sheet in sheets:
        member = sheet.get("grid_member")
        grids = sheet.get("grids") or []
        lines = ["=" * 72, "入户核实名单（预警未覆盖的户）"]
        if head:
            lines.append(head)
        if as_of:
            lines.append(f"统计时间：{china_time(as_of, seconds=True)}（北京时间）")
        lines.append(f"村：{sheet.get('village_name', '')}（{sheet.get('village_code', '')}）")
        if member:
            acked = "已确认收到预警" if member.get("acknowledged") else "本人尚未确认收到预警"
            lines.append(
                f"网格员：{member.get('name', '')}（{member.get('id', '')}）  "
                f"电话 {member.get('phone') or '无'}  {acked}"
            )
        else:
            lines.append("网格员：无（以下网格未设网格员，请村里安排人员入户）")
        lines.append(
            "网格："
            + "，".join(f"{g.get('name') or ''}（{g.get('id')}）" for g in grids)
            + f"    未覆盖户数：{sheet.get('households', 0)}"
        )
        for grid in grids:
            lines.append("")
            lines.append(f"  网格 {grid.get('name') or ''}（{grid.get('id')}）")
            for household in grid.get("households") or []:
                late = "  [失效后才确认]" if household.get("reached_late") else ""
                address = household.get("address") or "（无地址）"
                lines.append(f"  □ 户 {household.get('id')}  {address}{late}")
                persons = household.get("persons") or []
                if not persons:
                    lines.append("      （户内无登记人员）")
                for person in persons:
                    lines.append(
                        f"      {person.get('name', '')}（{person.get('id')}）  "
                        f"电话 {person.get('phone') or '无'}{_flags(person)}"
                    )
        lines.append("")
        lines.append("入户核实后，请在系统中标记该户已覆盖（网格员账号）。")
        out.append("\n".join(lines))
    if not out:
        return "没有未覆盖的户。\n"
    return "\n\n".join(out) + "\n"
