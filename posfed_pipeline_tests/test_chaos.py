"""The chaos run, reduced for CI: a few hundred files, every fault and every bad file at least
once, against the real store under its supervisor (code server, webserver, daemon, trigger,
workers), central database and .dat folder.

The full run (10,000 files) is `posfed chaos`, documented in the README with its last result.
"""

import shutil

import pytest
from posfed_dev import chaos

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


def test_reduced_chaos_run_loses_nothing_and_duplicates_nothing():
    settings = chaos.ChaosSettings(
        receipts=300,
        rate=10.0,
        db_outage_seconds=10.0,
        drain_timeout=240.0,
        keep=True,
        progress=False,
    )
    run = chaos.ChaosRun(settings)
    report = run.execute()
    try:
        assert report["passed"], chaos.format_report(report)
        assert {f["fault"] for f in report["faults"]} == {fault for _, fault in chaos.FAULTS}
        # Every kind of process was killed (the power cut: all at once), came back, and the
        # next .dat file followed each kill; the report says how soon.
        kills = [f for f in report["faults"] if f["fault"] in chaos.KILL_FAULTS]
        assert {f["fault"] for f in kills} == {
            "kill_worker",
            "kill_daemon",
            "kill_fastpath",
            "kill_code_server",
            "kill_webserver",
            "power_cut",
        }
        for kill in kills:
            assert kill.get("kill_to_dat_seconds") is not None, kill
            assert kill.get("back_after_seconds") is not None, kill
        assert set(report["kill_to_dat_seconds"]) == set(chaos.KILL_FAULTS)
        assert "next .dat" in chaos.format_report(report)
        assert report["kinds"]["twin"] >= 1 and report["kinds"]["future"] >= 1
        assert set(report["kinds"]) >= set(chaos.MIX)  # every kind of file was sent
        counts = report["counts"]
        assert counts["sent"] == 300
        assert counts["valid"] == counts["loaded_rows"] == counts["dat_files"] > 200
        assert counts["unbilled"] == 0
        assert set(report["quarantined_by_reason"]) == set(chaos.INVALID_KINDS)

        # The reconciliation is not blind: a .dat file removed behind the pipeline's back,
        # or a file deleted from quarantine, is reported and fails the run.
        delivered = next(i for i in run.traffic.items if i.kind == "valid")
        rel = run.traffic.dat_path(delivered).relative_to(run.config.dat_dir)
        (run.importer.folder / rel).unlink()
        quarantined = next(run.config.terminals[0].quarantine.glob("*.error.json"), None) or next(
            p for t in run.config.terminals for p in t.quarantine.glob("*.error.json")
        )
        quarantined.unlink()
        outcome = run.reconcile()
        assert not outcome.passed
        assert outcome.counts["lost"] == 2
        assert outcome.counts["unbilled"] == 1  # the sale whose .dat went missing
        # A sale billed twice (its .dat written again after the import) is seen too.
        twice = next(p for p in run.importer.folder.rglob("*.dat"))
        shutil.copy(twice, run.config.dat_dir / twice.relative_to(run.importer.folder))
        again = run.reconcile()
        assert again.counts["billed_twice"] == 1 and again.counts["duplicates"] >= 1
    finally:
        shutil.rmtree(report["root"], ignore_errors=True)
