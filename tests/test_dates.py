from datetime import date, timedelta

from nmt_cli.data.dates import (
    CASES,
    FIRST_DATE,
    FORMATS,
    LAST_DATE,
    WEEKDAYS,
    generate_dates,
    render_date,
    split_dates,
    write_pairs,
)


def test_deterministic_for_a_seed():
    assert generate_dates(200, seed=3) == generate_dates(200, seed=3)
    assert generate_dates(200, seed=3) != generate_dates(200, seed=4)


def test_targets_are_iso_dates_in_range():
    for _, tgt in generate_dates(500, seed=0):
        assert FIRST_DATE <= date.fromisoformat(tgt) <= LAST_DATE


def test_every_source_string_determines_its_target():
    # Exhaustive: every date in every format; lower-case uniqueness implies it for all cases.
    seen: dict[str, date] = {}
    d = FIRST_DATE
    while d <= LAST_DATE:
        for fmt in FORMATS:
            src = render_date(d, fmt)
            assert seen.setdefault(src, d) == d, f"{src!r} is both {seen[src]} and {d}"
        d += timedelta(days=1)


def test_sampled_pairs_are_consistent():
    mapping: dict[str, str] = {}
    for src, tgt in generate_dates(5000, seed=1):
        assert mapping.setdefault(src, tgt) == tgt


def test_known_renderings():
    d = date(1994, 9, 27)
    assert render_date(d, "month_d_yyyy", "title") == "September 27, 1994"
    assert render_date(d, "d_mon_yyyy", "upper") == "27 SEP 1994"
    assert render_date(d, "us_m_d_yy") == "9/27/94"
    assert render_date(d, "eu_dd_mm_yyyy") == "27.09.1994"
    assert render_date(d, "ap_style", "title") == "Sept. 27, 1994"
    assert render_date(d, "the_nth_of_month", "title") == "The 27th of September, 1994"
    assert render_date(date(2003, 1, 2), "us_m_d_yy") == "1/2/03"
    assert render_date(date(2021, 3, 22), "nth_of_month_yyyy") == "22nd of march 2021"
    assert render_date(date(2021, 3, 13), "nth_of_month_yyyy") == "13th of march 2021"


def test_weekdays_are_correct():
    assert render_date(date(1994, 9, 27), "weekday_month_d_yyyy") == "tuesday, september 27, 1994"
    for src, tgt in generate_dates(2000, seed=2):
        words = src.lower().replace(",", "").split()
        named = [w for w in words if w in WEEKDAYS or w in {x[:3] for x in WEEKDAYS}]
        if named:
            assert WEEKDAYS[date.fromisoformat(tgt).weekday()].startswith(named[0])


def test_at_least_twelve_formats_in_use():
    assert len(FORMATS) >= 12
    d = date(1994, 9, 27)
    assert len({render_date(d, f) for f in FORMATS}) == len(FORMATS)
    sources = {src for src, _ in generate_dates(3000, seed=0)}
    assert any(s.isupper() for s in sources) and any(
        s[:1].isupper() and not s.isupper() for s in sources
    )
    assert len(CASES) == 3


def test_splits_are_disjoint_and_sized():
    splits = split_dates(2000, 200, 300, seed=0)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [2000, 200, 300]
    src = {k: {s for s, _ in v} for k, v in splits.items()}
    assert not src["train"] & src["test"]
    assert not src["train"] & src["valid"]
    assert not src["valid"] & src["test"]
    assert split_dates(50, 20, 300, seed=0)["test"] == splits["test"]


def test_write_pairs(tmp_path):
    pairs = generate_dates(10, seed=0)
    write_pairs(pairs, tmp_path / "d" / "train.src", tmp_path / "d" / "train.tgt")
    src = (tmp_path / "d" / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (tmp_path / "d" / "train.tgt").read_text(encoding="utf-8").splitlines()
    assert list(zip(src, tgt, strict=True)) == pairs
