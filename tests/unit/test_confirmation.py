"""The confirmation matches the risk: a typed campaign id (or delete) for every record, else y/N."""

from __future__ import annotations

from fakes import make_clear, make_lane

from orchestrator.cli.confirm import confirmation, target_of


def test_filtered_clears_only_ask_y_or_n_naming_the_host() -> None:
    lane = make_lane("T", make_clear(1, "3001"), make_clear(2, "3001", result="failed"))
    asked = confirmation([lane], "wv0014.wolkvox.com")
    assert asked is not None
    assert asked.text == (
        "Target: wv0014.wolkvox.com\n"
        "This run deletes records from 1 campaign(s), 2 clears: 0 unfiltered (all records), "
        "2 filtered by result.\n"
        "Records with these results in 1 campaign(s):\n"
        "  server 0014 predictive campaign 3001: busy, failed"
    )
    assert asked.question == "Delete these records on wv0014.wolkvox.com? [y/N] "
    assert asked.answer is None
    assert asked.confirmed("y\n") and asked.confirmed(" YES ")
    assert not asked.confirmed("\n") and not asked.confirmed("n\n")


def test_every_record_of_one_campaign_takes_its_id_typed_out() -> None:
    lane = make_lane("T", make_clear(1, "3001"), make_clear(2, "3002", result=None))
    asked = confirmation([lane], "wv0014.wolkvox.com")
    assert asked is not None
    assert (
        "EVERY record of 1 campaign(s):\n  server 0014 predictive campaign 3002: ALL RECORDS"
        in (asked.text)
    )
    assert asked.question == (
        "To delete EVERY record of campaign 3002 on wv0014.wolkvox.com, "
        "type the campaign id (3002): "
    )
    assert asked.confirmed("3002\n")
    for reflex in ("y\n", "yes\n", "3001\n", "30021\n", "\n"):
        assert not asked.confirmed(reflex)


def test_every_record_of_several_campaigns_takes_delete_typed_out() -> None:
    lane = make_lane(
        "T", make_clear(1, "3001", result=None), make_clear(2, "3002", server="0038", result=None)
    )
    asked = confirmation([lane], "wv0014.wolkvox.com, wv0038.wolkvox.com")
    assert asked is not None
    assert asked.question == (
        "To delete EVERY record of 2 campaigns on wv0014.wolkvox.com, wv0038.wolkvox.com, "
        "type delete: "
    )
    assert asked.confirmed("delete\n")
    assert not asked.confirmed("y\n") and not asked.confirmed("3001\n")


def test_a_resume_lists_what_is_left_and_asks_about_that_only() -> None:
    lane = make_lane(
        "T",
        make_clear(1, "3001", result=None),
        make_clear(2, "3002"),
        make_clear(3, "3003"),
    )
    asked = confirmation([lane], "simulator", done=frozenset({1, 2}), resumed="RUN")
    assert asked is not None
    assert asked.text == (
        "Target: simulator\n"
        "Resuming run RUN: 1 of 3 clear(s) left, 2 done before.\n"
        "This run deletes records from 1 campaign(s), 1 clear: 0 unfiltered (all records), "
        "1 filtered by result.\n"
        "Records with these results in 1 campaign(s):\n"
        "  server 0014 predictive campaign 3003: busy"
    )
    # The unfiltered clear succeeded before: what is left deletes filtered records only.
    assert asked.answer is None


def test_nothing_left_asks_nothing() -> None:
    lane = make_lane("T", make_clear(1, "3001", result=None))
    assert confirmation([lane], "simulator", done=frozenset({1}), resumed="RUN") is None


def test_the_target_is_each_servers_host_or_the_simulator() -> None:
    template = "https://wv{server}.wolkvox.com/"
    assert target_of(template, ["0014", "0038", "0014"], simulated=False) == (
        "wv0014.wolkvox.com, wv0038.wolkvox.com"
    )
    assert target_of("http://127.0.0.1:8080", ["0014"], simulated=False) == "127.0.0.1"
    assert target_of(template, ["0014"], simulated=True) == "simulator"
