"""The ledger-trust rule (sinks.mlflow.ledger_trust and LedgerTrust): what the sink takes as being
on the server without asking it. Pure functions: no server, no ledger file."""

import pytest

from importer.ledger import COMPARE
from importer.sinks.mlflow import LedgerTrust, ledger_trust

FP = "f00d:error"  # a record's fingerprint with its conflict policy, as the sink makes it


def row(*, complete=True, fingerprint=FP, experiment_id="1", run_id="r1"):
    return {"run_id": run_id, "experiment_id": experiment_id, "fingerprint": fingerprint,
            "complete": int(complete)}  # sqlite gives 0/1


NOTHING = LedgerTrust()
UNCHANGED = LedgerTrust(unchanged=True, run_id="r1", counts=True, same_state=True)
RESUMED = LedgerTrust(run_id="r1", counts=True, same_state=True)  # counted in this very state
CHECK_THEN_COUNTS = LedgerTrust(run_id="r1", counts=True)  # counts hold where their digests match
CHECK_THEN_ASK = LedgerTrust(run_id="r1", counts=False)


@pytest.mark.parametrize("ledger_row, experiment_id, moved, expected", [
    # no row: nothing known, the run is searched for by its key
    (None, "1", False, NOTHING),
    (None, "1", True, NOTHING),
    # a dry run against a server without the experiment: no id to compare with, nothing known
    (row(), None, False, NOTHING),
    # complete in this very state and experiment: believed without a single request
    (row(), "1", False, UNCHANGED),
    (row(), "1", True, UNCHANGED),
    # sqlite's 0 is not complete: an interrupted import is resumed, never skipped
    (row(complete=False), "1", False, RESUMED),
    (row(complete=False), "1", True, RESUMED),
    # the experiment was deleted and made again under the same name: its old run is checked
    (row(experiment_id="7"), "1", False, RESUMED),
    # the policy is part of the fingerprint: another policy may write other params
    (row(fingerprint="f00d:keep"), "1", False, CHECK_THEN_COUNTS),
    # a log that changed: logs grow at their end, so the counts of its first points hold
    (row(fingerprint="beef:error"), "1", False, CHECK_THEN_COUNTS),
    # ... but not after an import interrupted in another state: batches may have landed beyond
    # the counts, and the record changed since (a point among them may be another value now)
    (row(fingerprint="beef:error", complete=False), "1", False, CHECK_THEN_ASK),
    # an import that compared with the server was begun without a fingerprint: compare again
    (row(fingerprint="", complete=False), "1", False, CHECK_THEN_ASK),
    # a moved run that changed may have changed anywhere: its series are compared with the server
    (row(fingerprint="beef:error"), "1", True, CHECK_THEN_ASK),
    (row(fingerprint="beef:error", complete=False), "1", True, CHECK_THEN_ASK),
    (row(fingerprint="f00d:keep"), "1", True, CHECK_THEN_ASK),
])
def test_ledger_trust(ledger_row, experiment_id, moved, expected):
    assert ledger_trust(ledger_row, fingerprint=FP, experiment_id=experiment_id, moved=moved) == expected


@pytest.mark.parametrize("trust, sent, lengths, expected", [
    # counts not trusted: every series is asked about, whatever the ledger says
    (CHECK_THEN_ASK, {"loss": 3}, {"loss": 5, "acc": 5}, {"loss": None, "acc": None}),
    (NOTHING, {}, {"loss": 5}, {"loss": None}),
    # grown: its first points are there, the rest is sent
    (CHECK_THEN_COUNTS, {"loss": 3}, {"loss": 5}, {"loss": 3}),
    # as long as counted: nothing to send, nothing to ask
    (CHECK_THEN_COUNTS, {"loss": 5}, {"loss": 5}, {"loss": 5}),
    # a series the ledger never counted has none of its points there (not: ask)
    (CHECK_THEN_COUNTS, {"loss": 5}, {"loss": 5, "acc": 4}, {"loss": 5, "acc": 0}),
    (CHECK_THEN_COUNTS, {}, {"empty": 0}, {"empty": 0}),
    # shorter than counted: rewritten, not grown; only the server can tell what is missing
    (CHECK_THEN_COUNTS, {"loss": 7, "acc": 2}, {"loss": 5, "acc": 4}, {"loss": None, "acc": 2}),
    # one count too many is shorter too
    (CHECK_THEN_COUNTS, {"loss": 6}, {"loss": 5}, {"loss": None}),
    # a series the record no longer has is not the record's business here
    (CHECK_THEN_COUNTS, {"gone": 9, "loss": 1}, {"loss": 5}, {"loss": 1}),
])
def test_points_on_server(trust, sent, lengths, expected):
    assert trust.points_on_server(sent, lengths) == expected


@pytest.mark.parametrize("trust, recorded, source, expected", [
    # a digest recorded: the source's first points now must hash the same
    (CHECK_THEN_COUNTS, "d1", "d1", True),
    (CHECK_THEN_COUNTS, "d1", "d2", False),  # a point among them changed at the source
    (RESUMED, "d1", "d2", False),  # the same record, with digests of an older state's points
    (RESUMED, COMPARE, "d1", False),  # left changed, or counted in another state: compare
    # none (a count saved batch by batch): only the very state it was counted in
    (RESUMED, None, None, True),
    (CHECK_THEN_COUNTS, None, None, False),
])
def test_prefix_holds(trust, recorded, source, expected):
    assert trust.prefix_holds(recorded, source) is expected


D = {"loss": "d", "gone": "d"}  # digests recorded for every series


@pytest.mark.parametrize("trust, sent, lengths, digests, expected", [
    (CHECK_THEN_ASK, {}, {"loss": 5}, {}, False),  # must be compared with the server: read it whole
    (NOTHING, {}, None, {}, False),
    (CHECK_THEN_COUNTS, {"loss": 3}, {"loss": 5}, D, True),  # grown
    (CHECK_THEN_COUNTS, {"loss": 5}, {"loss": 5}, D, True),  # the same
    (CHECK_THEN_COUNTS, {}, {"loss": 5}, {}, True),  # nothing landed yet
    (CHECK_THEN_COUNTS, {"loss": 6}, {"loss": 5}, D, False),  # shorter: rewritten
    (CHECK_THEN_COUNTS, {"loss": 3, "gone": 1}, {"loss": 5}, D, False),  # a series vanished: rewritten
    (CHECK_THEN_COUNTS, {"loss": 3, "gone": 0}, {"loss": 5}, D, True),  # ... unless none of it was sent
    (CHECK_THEN_COUNTS, {"loss": 9}, None, D, True),  # lengths unknown before reading (a bundle)
    # what was sent is checked against its digest while it is read (sinks.mlflow._unsent) ...
    (CHECK_THEN_COUNTS, {"loss": 3}, {"loss": 5}, {}, False),  # ... none: compare with the server
    (RESUMED, {"loss": 3}, {"loss": 5}, {}, True),  # ... none needed: counted in this very state
    (RESUMED, {"loss": 3}, {"loss": 5}, {"loss": COMPARE}, False),  # known to differ
])
def test_streamable(trust, sent, lengths, digests, expected):
    assert trust.streamable(sent, lengths, digests) is expected
