"""The results store's claims: a live process's claim holds, a dead one's is taken over."""

import json
import os
import subprocess
import sys

from ecoflap_exp.tracking.store import ResultsStore


def test_a_claim_of_a_live_process_holds_and_one_of_a_dead_process_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    with store.claim("abc") as holder:
        assert holder is None
        with store.claim("abc") as other:  # this process itself is alive: the second claim waits its turn
            assert other["pid"] == os.getpid()
    assert not (tmp_path / "abc.claim").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "abc.claim").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with store.claim("abc") as holder:
        assert holder is None and json.loads((tmp_path / "abc.claim").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
