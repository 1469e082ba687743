import pytest

from analytics import scales


def phq(values):
    return dict(zip(range(1, 10), values))


def test_phq9_full_items_sum():
    r = scales.score_items(scales.get("PHQ-9"), phq([3] * 9))
    assert (r.total, r.method, r.problems) == (27.0, "items", ())


@pytest.mark.parametrize("missing", [1, 2])
def test_phq9_prorates_one_or_two_missing(missing):
    values = [2] * 9
    for i in range(missing):
        values[i] = None
    r = scales.score_items(scales.get("PHQ-9"), phq(values))
    assert r.method == "prorated" and r.total == 18.0


def test_phq9_three_missing_has_no_total():
    values = [1] * 6 + [None] * 3
    r = scales.score_items(scales.get("PHQ-9"), phq(values))
    assert r.total is None and r.problems and r.problems[0][0] == "total"


def test_phq9_proration_rounds_half_up():
    # answered 7 items summing 10 -> 10/7*9 = 12.857 -> 13
    values = [2, 2, 2, 1, 1, 1, 1, None, None]
    r = scales.score_items(scales.get("PHQ-9"), phq(values))
    assert r.total == 13.0


def test_phq9_functional_item_not_in_total():
    items = phq([1] * 9)
    items[10] = 3
    r = scales.score_items(scales.get("PHQ-9"), items)
    assert r.total == 9.0


def test_item_out_of_range_names_column():
    r = scales.score_items(scales.get("GAD-7"), {1: 4, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0})
    assert r.total is None and r.problems[0][0] == "item_1" and "0-3" in r.problems[0][1]


def test_item_not_belonging_to_scale_rejected():
    items = {i: 1 for i in range(1, 8)}
    items[8] = 1
    r = scales.score_items(scales.get("GAD-7"), items)
    assert r.problems and r.problems[0][0] == "item_8"


def test_total_disagreeing_with_items_rejected():
    r = scales.score_items(scales.get("PHQ-9"), phq([1] * 9), given_total=10)
    assert r.total is None and "disagrees" in r.problems[0][1]


def test_total_alone_accepted():
    r = scales.score_items(scales.get("MADRS"), {}, given_total=31)
    assert (r.total, r.method) == (31.0, "given")


def test_madrs_no_proration_but_consistent_given_total():
    items = {i: 3 for i in range(1, 10)}
    assert scales.score_items(scales.get("MADRS"), items).total is None
    assert scales.score_items(scales.get("MADRS"), items, given_total=30).total == 30.0
    assert scales.score_items(scales.get("MADRS"), items, given_total=40).problems


@pytest.mark.parametrize("name", ["PHQ9", "phq-9", "PHQ 9", "Phq_9"])
def test_spelling_variants_resolve(name):
    assert scales.resolve(name).code == "PHQ-9"


def test_unknown_instrument():
    assert scales.resolve("BDI-II") is None


@pytest.mark.parametrize("total,band", [(0, "minimal"), (4, "minimal"), (5, "mild"), (14, "moderate"), (19, "moderately severe"), (27, "severe")])
def test_phq9_bands(total, band):
    assert scales.get("PHQ-9").band(total) == band


@pytest.mark.parametrize("total,band", [(6, "normal"), (7, "mild"), (19, "mild"), (20, "moderate"), (34, "moderate"), (35, "severe")])
def test_madrs_bands(total, band):
    assert scales.get("MADRS").band(total) == band


def test_prorated_total_between_bands_takes_lower_band():
    assert scales.get("PHQ-9").band(4.5) == "minimal"
