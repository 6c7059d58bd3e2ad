"""A run's report: the one line the command prints."""

from __future__ import annotations

from worker.runs import NOTES_SHOWN, RunReport, RunStatus


def test_the_summary_line_spells_out_the_first_notes_and_counts_the_rest() -> None:
    report = RunReport("backfill_1", "backfill", RunStatus.OK)
    report.counts["customers"] = 12
    for n in range(NOTES_SHOWN + 40):
        report.note(f"subscription sub_{n}: discount di_{n} valued as invoiced")
    report.note("subscription sub_0: discount di_0 valued as invoiced")  # once only

    line = report.summary

    assert line.startswith("backfill backfill_1 ok: 12 customers; notes: subscription sub_0: ")
    assert f"sub_{NOTES_SHOWN - 1}:" in line and f"sub_{NOTES_SHOWN}:" not in line
    assert line.endswith("; 40 more notes in the log")
    assert len(report.notes) == NOTES_SHOWN + 40


def test_a_few_notes_are_all_on_the_line() -> None:
    report = RunReport("reconcile_1", "reconcile", RunStatus.OK)
    report.note("customer cus_1: waits for coupon SUMMER15")
    assert report.summary == "reconcile reconcile_1 ok: nothing to do; notes: customer cus_1: waits for coupon SUMMER15"
