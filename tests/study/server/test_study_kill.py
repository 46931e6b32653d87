"""A server killed with SIGKILL in the middle of a study keeps every acknowledged answer, intact."""

import signal
import threading
import uuid

import httpx
from serverkit import build_study, live_server, pass_comprehension

from benchmarks.bench_study_server import check_database, comprehension_key
from prunexplain.runs import KILL_AFTER

PARTICIPANTS, TASKS, KILLED_AFTER = 6, 10, 20


class Participant(threading.Thread):
    """Answers as fast as the server lets it; remembers what was acknowledged and what was in flight."""

    def __init__(self, base: str, worker: str, acknowledged: set, key: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, timeout=10)
        self.worker, self.acknowledged, self.in_flight = worker, acknowledged, None
        consent = self.client.post("/consent", data={"participant": worker, "source": "mturk", "agree": "yes"})
        assert consent.status_code == 303 and pass_comprehension(self.client, key)

    def run(self) -> None:
        try:
            while not (task := self.client.get("/api/task").json())["done"]:
                self.in_flight = {"submission_id": str(uuid.uuid4()), "position": task["position"],
                                  "answer": task["options"][-1]}
                response = self.client.post("/api/answers", json=self.in_flight)
                assert response.json()["status"] == "stored"
                self.acknowledged.add(self.in_flight["submission_id"])
                self.in_flight = None
        except httpx.TransportError:
            pass  # the server is gone; in_flight holds the unacknowledged submission, if any


def test_sigkill_mid_study_loses_no_acknowledged_answer(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study", images=8)
    options = ("--tasks", str(TASKS), "--attention-checks", "0")
    acknowledged: set[str] = set()
    # the server SIGKILLs itself right after committing its 20th answer, before acknowledging it
    with live_server(run_dir, *options, env={KILL_AFTER: f"answer:{KILLED_AFTER}"}) as (base, process):
        key = comprehension_key(run_dir / "study")
        participants = [Participant(base, f"w{n}", acknowledged, key) for n in range(PARTICIPANTS)]
        for participant in participants:
            participant.start()
        for participant in participants:
            participant.join(30)
        assert process.wait(10) == -signal.SIGKILL
    killed_at = set(acknowledged)
    found = check_database(run_dir / "study" / "study.db", killed_at)
    in_flight = {p.in_flight["submission_id"] for p in participants if p.in_flight}
    assert found["rows"] == KILLED_AFTER and found["lost"] == found["duplicated"] == 0 and found["integrity_ok"] == 1
    assert 1 <= found["unexpected"] <= len(in_flight)  # the 20th (at least) committed, never acknowledged

    with live_server(run_dir, *options) as (base, _):  # same database, new process, the same sessions
        for participant in participants:
            participant.client = httpx.Client(base_url=base, cookies=participant.client.cookies, timeout=10)
            if participant.in_flight:  # the client retries what it never saw acknowledged
                retry = participant.client.post("/api/answers", json=participant.in_flight).json()
                assert retry["status"] in ("stored", "duplicate")
                acknowledged.add(participant.in_flight["submission_id"])
            participant.run()
            assert participant.client.get("/api/task").json()["done"]
    found = check_database(run_dir / "study" / "study.db", acknowledged)
    assert found == {"rows": PARTICIPANTS * TASKS, "lost": 0, "duplicated": 0, "unexpected": 0, "integrity_ok": 1}
