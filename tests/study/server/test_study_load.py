"""The load benchmark in small: participants at once against a real server lose and double nothing."""

from serverkit import build_study, live_server

from benchmarks.bench_study_server import check_database, comprehension_key, simulate
from prunexplain.study.server.store import read_flow


def test_concurrent_participants_lose_and_duplicate_no_answer(tmp_path):
    run_dir = tmp_path / "run"
    build_study(run_dir / "study", images=8)  # 48 stimuli in exp1 and exp2: 240 places for 100 answers
    with live_server(run_dir, "--tasks", "5", "--attention-checks", "1") as (base, _):
        load = simulate(base, participants=20, tasks=5, timeout=60, retry_share=0.3,
                        comprehension=comprehension_key(run_dir / "study"))
    found = check_database(run_dir / "study" / "study.db", load.acknowledged)
    assert len(load.acknowledged) == 20 * 6 and load.completed == 20
    assert found == {"rows": 120, "lost": 0, "duplicated": 0, "unexpected": 0, "integrity_ok": 1}
    assert load.duplicates_acknowledged > 10  # retries happened and were recognised
    flow = read_flow(run_dir / "study" / "study.db")  # every participant took the comprehension check
    assert flow["comprehension_passed"] == flow["completed"] == flow["analysed"] == 20
