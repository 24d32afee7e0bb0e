"""A ledger that outlived its server: the server at the same URL was wiped (or replaced by a new
one), so the experiment is made anew, here even with the old id. The ledger's complete rows are
about the old store and must not make the runs `unchanged` without a look."""

from __future__ import annotations

import json
import shutil

from importer.local_server import LocalServer, free_port

from conftest import View, run_importer, write_json


def test_server_wiped_under_the_same_url_gets_every_run_again(tmp_path):
    port = free_port()
    manifest = write_json(tmp_path / "m.json", {"format_version": 1, "experiment": "wiped", "runs": [
        {"id": f"r{i}", "metrics": {"loss": [{"step": s, "value": 1.0 / (s + 1)} for s in range(5)]}} for i in range(3)]})
    ledger = tmp_path / "ledger.db"

    def import_into_a_fresh_server(store: str) -> tuple[dict, dict]:
        with LocalServer(tmp_path / store, port=port) as srv:
            proc = run_importer("import", str(manifest), "--tracking-uri", srv.url, "--state", str(ledger), "--json")
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
            view = View(srv.url)
            return json.loads(proc.stdout)["runs"], {k: view.history(r["info"]["run_id"], "loss")
                                                     for k, r in view.by_key("wiped").items()}

    first, stored = import_into_a_fresh_server("one")
    assert first["created"] == 3 and len(stored) == 3
    shutil.rmtree(tmp_path / "one")
    again, stored_again = import_into_a_fresh_server("two")  # same URL, same ledger, empty store
    assert again["created"] == 3 and again["unchanged"] == 0, again
    assert [len(h) for h in stored_again.values()] == [5, 5, 5]
