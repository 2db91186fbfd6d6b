"""Value converters: examples from PS3.5 and properties over generated values (hypothesis)."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhirimg import values

# FHIR R4 dateTime regex (datatypes.html#dateTime).
FHIR_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?)?)?(Z|(\+|-)((0[0-9]|1[0-3]):"
    r"[0-5][0-9]|14:00)?)?)?"
)


@given(st.dates(min_value=date(1000, 1, 1)))
def test_da_round_trip(day: date) -> None:
    assert values.parse_da(day.strftime("%Y%m%d")) == day.isoformat()


@given(st.text(max_size=20))
def test_converters_never_raise(text: str) -> None:
    values.parse_da(text)
    values.parse_tm(text)
    values.parse_offset(text)
    values.parse_is(text)
    values.is_valid_uid(text)
    values.human_names(text)
    values.fhir_gender(text)
    result, _ = values.fhir_datetime_from_dt(text)
    assert result is None or FHIR_DATETIME.fullmatch(result)


@given(
    st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)),
    st.integers(0, 23),
    st.one_of(st.none(), st.integers(0, 59)),
    st.integers(-12 * 60, 14 * 60).map(lambda m: timedelta(minutes=m)),
)
def test_datetime_with_offset_is_valid_fhir(
    day: date, hour: int, minute: int | None, off: timedelta
) -> None:
    tm = f"{hour:02d}" + (f"{minute:02d}" if minute is not None else "")
    sign = "-" if off < timedelta(0) else "+"
    total = abs(int(off.total_seconds()) // 60)
    offset = f"{sign}{total // 60:02d}{total % 60:02d}"
    result, warnings = values.fhir_datetime(day.strftime("%Y%m%d"), tm, offset)
    assert warnings == []
    assert result is not None
    assert FHIR_DATETIME.fullmatch(result), result
    assert result.startswith(f"{day.isoformat()}T{hour:02d}:{minute or 0:02d}:00")


@pytest.mark.parametrize(
    ("da", "tm", "tz", "zone", "expected"),
    [
        ("20240105", "093000.123456", "+0100", None, "2024-01-05T09:30:00.123456+01:00"),
        ("20240105", "09", "-0500", None, "2024-01-05T09:00:00-05:00"),
        ("20240105", "0930", "+0000", None, "2024-01-05T09:30:00Z"),
        ("20240705", "0930", None, "Europe/Berlin", "2024-07-05T09:30:00+02:00"),  # summer time
        ("20240105", "0930", None, "Europe/Berlin", "2024-01-05T09:30:00+01:00"),
        ("20240105", "0930", None, None, "2024-01-05"),
        ("20240105", "11:20:", "+0100", None, "2024-01-05"),
        ("1996.06.11", "0930", "+0100", None, None),
        ("20240105", None, "+0100", None, "2024-01-05"),
    ],
)
def test_fhir_datetime_cases(
    da: str, tm: str | None, tz: str | None, zone: str | None, expected: str | None
) -> None:
    assert values.fhir_datetime(da, tm, tz, zone)[0] == expected


def test_missing_zone_is_reported() -> None:
    result, warnings = values.fhir_datetime("20240105", "0930")
    assert result == "2024-01-05"
    assert warnings
    assert "no time zone" in warnings[0]


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        ("2024", "2024"),
        ("202402", "2024-02"),
        ("20240229", "2024-02-29"),
        ("20240229101112+0200", "2024-02-29T10:11:12+02:00"),
        ("20240230", None),
        ("202413", None),
    ],
)
def test_dt(dt: str, expected: str | None) -> None:
    assert values.fhir_datetime_from_dt(dt)[0] == expected


_component = st.text(
    alphabet=st.characters(
        blacklist_characters="^=\\", blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")
    ),
    min_size=1,
    max_size=8,
)


@given(_component, _component, _component)
def test_pn_components_land_in_place(family: str, given_name: str, middle: str) -> None:
    names = values.human_names(f"{family}^{given_name}^{middle}")
    assert names == [{"family": family, "given": [given_name, middle]}]


def test_pn_three_groups_get_representation() -> None:
    names = values.human_names("Yamada^Tarou=山田^太郎=やまだ^たろう")
    codes = [n["extension"][0]["valueCode"] for n in names]  # type: ignore[index]
    assert codes == ["ABC", "IDE", "SYL"]
    assert [n["family"] for n in names] == ["Yamada", "山田", "やまだ"]


def test_pn_skips_empty_groups() -> None:
    assert values.human_names("=山田^太郎")[0]["family"] == "山田"
    assert values.human_names("") == []


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=8))
def test_generated_uids_are_valid(parts: list[int]) -> None:
    uid = ".".join(str(p) for p in parts)
    assert values.is_valid_uid(uid) == (len(uid) <= 64)


@pytest.mark.parametrize("uid", ["1.02", "1..2", ".1", "1.2.", "1.2a", "1." + "1" * 64])
def test_invalid_uids(uid: str) -> None:
    assert not values.is_valid_uid(uid)


@pytest.mark.parametrize(
    ("pn", "code"), [("=山田^太郎", "IDE"), ("==やまだ^たろう", "SYL"), ("Doe^John=", None)]
)
def test_pn_lone_group_keeps_its_representation(pn: str, code: str | None) -> None:
    # PS3.5 6.2.1.1: the group's position, not the number of groups, says which form it is; an
    # ideographic-only name without IDE would be read as the alphabetic form.
    (name,) = values.human_names(pn)
    if code is None:
        assert "extension" not in name
    else:
        assert name["extension"] == [{"url": values.EN_REPRESENTATION_URL, "valueCode": code}]


@pytest.mark.parametrize("offset", ["+1430", "-1300", "-1230", "+1401"])
def test_offset_outside_dicom_range_is_rejected(offset: str) -> None:
    # PS3.5 Table 6.2-1 (DT): the offset runs from -1200 to +1400; FHIR's dateTime pattern stops
    # at +14:00 too, so "+14:30" would make the whole resource invalid.
    assert values.parse_offset(offset) is None
    result, warnings = values.fhir_datetime("20240105", "0930", offset)
    assert result == "2024-01-05"
    assert warnings


@pytest.mark.parametrize("offset", ["+1400", "-1200", "+0545", "-0930"])
def test_offset_edges_are_kept(offset: str) -> None:
    assert values.parse_offset(offset) is not None


def test_dt_bad_own_offset_falls_back_to_timezone_offset() -> None:
    # fhir-imaging-spec.md "Dates and times": DT's own offset, else (0008,0201), else the zone.
    # An unusable own offset is no offset: (0008,0201) comes next, not the zone.
    result, warnings = values.fhir_datetime_from_dt("20240105093000+2500", "+0100", "UTC")
    assert result == "2024-01-05T09:30:00+01:00"
    assert any("+2500" in w for w in warnings)


@pytest.mark.parametrize("dt", ["0000", "000001"])
def test_dt_year_zero_is_left_out(dt: str) -> None:
    # FHIR date/dateTime have no year 0000 (datatypes.html pattern); DICOM DT years are 0001+.
    result, warnings = values.fhir_datetime_from_dt(dt)
    assert result is None
    assert warnings
