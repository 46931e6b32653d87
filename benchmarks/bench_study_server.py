"""Load on the self-hosted study: many participants at once against a real `prunexplain study serve`.

200 simulated participants (asyncio + httpx, one connection pool each, all started together) consent,
pass the comprehension check (its questions fetched, the right answers posted, as a participant who
read the instructions does) and answer 20 tasks each through the JSON API, one in ten answers sent
twice as a client retrying would. Each comes from its own address, as through a reverse proxy
(X-Forwarded-For, which uvicorn trusts from 127.0.0.1), so the server's per-address limits apply to
each as to a real participant.
Every answer is acknowledged only after its transaction committed (synchronous=FULL), so
afterwards the database must hold exactly the acknowledged submissions: none lost, none twice.
Prints answers per second over the whole run and the latency of answer requests (p50, p99),
beside two floors measured in the same run: the server's CPU time per answer, and the time of one
durable SQLite commit on this disk (every answer needs one, so 1 / that time bounds answers/s).
Simulated participants and server share the machine's cores.
Bounded: each participant stops after its tasks (or a fixed number of requests), and the run
after TIMEOUT seconds whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

PARTICIPANTS, TASKS, TIMEOUT = 200, 20, 300.0
CLASSES = [f"{i}-shape{i}" for i in range(10)]
MODELS = ["nonpruned", "2pruned", "32pruned"]


def make_study(folder: Path, images: int) -> Path:
    """A study folder as `study build` writes it: exp1 (three pairs) and exp2 (three models) per image."""
    stimuli = []
    for i in range(images):
        label = CLASSES[i % len(CLASSES)]
        for a, b in (("nonpruned", "2pruned"), ("nonpruned", "32pruned"), ("2pruned", "32pruned")):
            stimuli.append({"experiment": "exp1", "file": f"exp1/{i}_{a}_{label}_{b}.png", "image": i, "label": label})
        stimuli += [{"experiment": "exp2", "file": f"exp2/{i}_{label}_{m}.png", "image": i, "label": label}
                    for m in MODELS]
    for stimulus in stimuli:
        (folder / stimulus["file"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / stimulus["file"])
    experiments = {"exp1": {"kind": "exp1", "folder": "exp1"}, "exp2": {"kind": "exp2", "folder": "exp2"}}
    manifest = {"classes": CLASSES, "experiments": experiments, "stimuli": stimuli}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(run_dir: Path, *options: str, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`prunexplain study serve --run run_dir` on a free port of 127.0.0.1, stopped on exit; yields
    (base URL, process) once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "prunexplain", "study", "serve", "--run", str(run_dir), "--port", str(port),
               *options]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}: {process.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz within 30 s")
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


@dataclass
class Load:
    acknowledged: set[str] = field(default_factory=set)  # submission ids the server said it stored
    duplicates_acknowledged: int = 0  # retries answered "duplicate"
    latencies: list[float] = field(default_factory=list)  # seconds per answer request
    seconds: float = 0.0
    completed: int = 0  # participants who got their completion code


def address(n: int) -> str:
    """The n-th simulated participant's own IPv4 address (10.0.0.0/8)."""
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def comprehension_key(study_dir: Path) -> dict[str, str]:
    """The comprehension check's right answers for every experiment of the study folder, by question
    id: what a participant who read the instructions answers (server/comprehension.py)."""
    from prunexplain.study.server.catalog import load_study
    from prunexplain.study.server.comprehension import questions

    return {q.id: q.answer for q in questions(load_study(study_dir).experiments.values())}


async def pass_comprehension(client: httpx.AsyncClient, key: dict[str, str] | None) -> None:
    """Take the comprehension check through the API when the server asks for it, with the answers of `key`."""
    asked = (await client.get("/api/comprehension")).raise_for_status().json()
    if not asked["required"]:
        return
    if key is None:
        raise RuntimeError("the server asks the comprehension check; pass its answers (comprehension_key)")
    answers = {question["id"]: key[question["id"]] for question in asked["questions"]}
    result = (await client.post("/api/comprehension", json={"answers": answers})).raise_for_status().json()
    if not result["passed"]:
        raise RuntimeError(f"the comprehension check refused the right answers: wrong {result['wrong']}")


async def _participant(base: str, worker: str, tasks: int, load: Load, rng: random.Random, retry_share: float,
                       forwarded_for: str, key: dict[str, str] | None):
    async with httpx.AsyncClient(base_url=base, timeout=60, headers={"X-Forwarded-For": forwarded_for}) as client:
        consent = await client.post("/consent", data={"participant": worker, "source": "mturk", "agree": "yes"})
        if consent.status_code != 303:
            raise RuntimeError(f"consent of {worker}: {consent.status_code} {consent.text[:200]}")
        await pass_comprehension(client, key)
        for _ in range(2 * tasks + 10):  # bounded even if the server never says done
            task = (await client.get("/api/task")).raise_for_status().json()
            if task["done"]:
                load.completed += 1
                return
            body = {"submission_id": str(uuid.uuid4()), "position": task["position"],
                    "answer": task["check"] or rng.choice(task["options"])}
            sends = 2 if rng.random() < retry_share else 1
            for send in range(sends):
                start = time.perf_counter()
                response = (await client.post("/api/answers", json=body)).raise_for_status().json()
                load.latencies.append(time.perf_counter() - start)
                if send == 0 and response["status"] == "stored":
                    load.acknowledged.add(body["submission_id"])
                elif send == 1 and response["status"] == "duplicate":
                    load.duplicates_acknowledged += 1


async def _all(base: str, participants: int, tasks: int, retry_share: float, seed: int,
               key: dict[str, str] | None) -> Load:
    load = Load()
    start = time.perf_counter()
    await asyncio.gather(*(_participant(base, f"sim{n:04d}", tasks, load, random.Random(seed + n), retry_share,
                                        address(n), key) for n in range(participants)))
    load.seconds = time.perf_counter() - start
    return load


def simulate(base: str, participants: int, tasks: int, timeout: float = TIMEOUT, retry_share: float = 0.1,
             seed: int = 0, comprehension: dict[str, str] | None = None) -> Load:
    """Run the participants against `base`; raises TimeoutError after `timeout` seconds.
    `comprehension`: the check's right answers (comprehension_key), needed unless the server runs
    with --no-comprehension."""
    return asyncio.run(asyncio.wait_for(_all(base, participants, tasks, retry_share, seed, comprehension), timeout))


def check_database(database: Path, acknowledged: set[str]) -> dict[str, int]:
    """Compare the answers table with what the server acknowledged: lost, duplicated, unexpected rows."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        submissions = [row[0] for row in db.execute("SELECT submission FROM answers")]
        same_task = db.execute(
            "SELECT COUNT(*) - COUNT(DISTINCT participant || ':' || position) FROM answers").fetchone()[0]
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {
        "rows": len(submissions), "lost": len(acknowledged - set(submissions)),
        "duplicated": len(submissions) - len(set(submissions)) + same_task,
        "unexpected": len(set(submissions) - acknowledged), "integrity_ok": int(integrity == "ok"),
    }


def commit_seconds(folder: Path, commits: int = 200) -> float:
    """Seconds per durable commit (WAL, synchronous=FULL) of one small row on this disk."""
    with contextlib.closing(sqlite3.connect(folder / "floor.db", isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (x)")
        start = time.perf_counter()
        for i in range(commits):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (i,))
            db.execute("COMMIT")
        return (time.perf_counter() - start) / commits


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 1000) - 1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        make_study(run_dir / "study", images=160)  # 960 stimuli x 5 answers > 200 x 20
        options = ["--tasks", str(TASKS), "--attention-checks", "0", "--answers-per-stimulus", "5"]
        env = {"PRUNEXPLAIN_ADMIN_TOKEN": "bench-admin-token-0123456789"}
        with server_process(run_dir, *options, env=env) as (base, process):
            cpu = _cpu_seconds(process.pid)
            load = simulate(base, PARTICIPANTS, TASKS, comprehension=comprehension_key(run_dir / "study"))
            cpu = _cpu_seconds(process.pid) - cpu
        found = check_database(run_dir / "study" / "study.db", load.acknowledged)
        commit = commit_seconds(Path(tmp))
    answers = len(load.acknowledged)
    rate = answers / load.seconds
    p50, p99 = (1000 * _percentile(load.latencies, share) for share in (0.5, 0.99))
    print(f"{PARTICIPANTS} participants x {TASKS} tasks at once, 1 in 10 answers sent twice; one uvicorn process")
    print(f"answers acknowledged {answers}, rows {found['rows']}, lost {found['lost']}, duplicated "
          f"{found['duplicated']}, unexpected {found['unexpected']}, retries answered 'duplicate' "
          f"{load.duplicates_acknowledged}, completed {load.completed}/{PARTICIPANTS}")
    print(f"{rate:.0f} answers/s over {load.seconds:.1f} s; answer latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"server CPU {1000 * cpu / answers:.2f} ms per answer (its task request and a share of the consent and "
          f"comprehension check included); one durable commit "
          f"{1000 * commit:.2f} ms here, so at most {1 / commit:.0f} answers/s: measured {rate * commit:.0%} of that")
    assert found["lost"] == found["duplicated"] == found["unexpected"] == 0 and found["integrity_ok"]
    assert answers == PARTICIPANTS * TASKS and load.completed == PARTICIPANTS


if __name__ == "__main__":
    main()
