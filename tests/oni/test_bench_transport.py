"""``oniwm bench transport``: a tiny real run end to end, and the measurement and report logic on fixed data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from oni.bench import measure, peers, report
from oni.bench.measure import KIB, MIB, Measurement, make_plan
from oni.bench.worker import Recording, RunReport
from oni.files import write_json

ONIWM = [sys.executable, "-m", "worldmodel.cli"]
REQUIRED = {"impl", "transport", "payload_bytes", "p50_us", "p99_us", "msgs_per_s", "lost"}


def test_tiny_run_writes_the_report_and_prints_a_table(tmp_path):
    out = tmp_path / "bench.json"
    argv = [*ONIWM, "bench", "transport", "--json", str(out), "--quick"]
    argv += ["--impls", "oni,raw_zmq", "--transports", "ipc", "--sizes", f"{KIB},{128 * KIB}", "--messages", "20"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report_doc = json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # written atomically: no temporary left
    rows = {(r["impl"], r["transport"], r["payload_bytes"]): r for r in report_doc["results"]}
    assert set(rows) == {(impl, "ipc", n) for impl in ("oni", "raw_zmq") for n in (KIB, 128 * KIB)}
    for key, row in rows.items():
        assert REQUIRED <= set(row), key
        assert row["status"] == "ok", row
        assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"] and row["msgs_per_s"] > 0, row
        assert row["lost"] == 0, row  # reliable everywhere
    assert report_doc["machine"]["cpu_count"] and report_doc["machine"]["libzmq"]
    assert report_doc["soak"] == {}
    targets = {t["name"]: t for t in report_doc["targets"]}
    assert targets["oni_vs_raw_zmq_1kb_ipc"]["value"] > 0
    assert targets["oni_vs_zenoh_1kb"]["passed"] is None  # not measured in this run
    assert targets["quick_under_60s"]["passed"] is True
    assert "impl" in result.stdout and "raw_zmq" in result.stdout and "targets" in result.stdout


LINKS = [(impl, transport) for impl, transports in peers.TRANSPORTS.items() for transport in transports]


def test_every_implementation_has_both_ends():
    assert set(peers.SENDERS) == set(peers.RECEIVERS) == set(peers.TRANSPORTS)


@pytest.mark.parametrize("impl, transport", LINKS)
def test_sender_and_receiver_carry_seq_and_publish_time(tmp_path, monkeypatch, impl, transport):
    if impl in peers.PEER_MODULES:
        pytest.importorskip(peers.PEER_MODULES[impl])
    monkeypatch.delenv("CYCLONEDDS_URI", raising=False)  # the DDS end sets it; restored after the test
    nbytes = 128 * KIB if transport == "shm" else KIB  # over shm, 128 KiB goes through a loaned slot
    endpoint = f"ipc://{tmp_path}/link.sock" if transport in ("ipc", "shm") else measure.endpoint_for(impl, transport)
    spec = peers.PeerSpec(impl, transport, endpoint, nbytes)
    sender = peers.open_sender(spec)
    receiver = peers.open_receiver(spec, sender.endpoint)
    try:
        sender.prepare(nbytes)
        receiver.prepare(nbytes)
        sample = None
        for _ in range(500):  # until the subscription has propagated (or DDS discovery has matched)
            seq = sender.send()
            sample = receiver.recv(0.02)
            if sample is not None:
                break
        assert sample is not None and sample[0] <= seq and sample[1] <= sample[2]
        while receiver.recv(0.05) is not None:
            pass
        sent = [sender.send() for _ in range(5)]  # fewer than the shm ring's slots: nothing may be overwritten
        got = [receiver.recv(1.0) for _ in sent]
        assert [g[0] for g in got if g is not None] == sent
        assert not any(receiver.counters().values())
    finally:
        receiver.close()
        sender.close()
    assert os.listdir(tmp_path) == []  # the ipc socket file is removed


def test_bench_modules_import_no_peer_or_heavy_library():
    code = (
        "import sys\nimport oni.cli.bench_transport, oni.bench.measure, oni.bench.report, oni.bench.peers\n"
        "loaded = sorted(m for m in ('zenoh', 'cyclonedds', 'torch', 'mujoco') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_missing_peer_names_the_extra_and_is_skipped(monkeypatch):
    with pytest.raises(peers.MissingExtra, match=r"oni-worldmodel\[bench\]"):
        peers.require("oni_no_such_peer_module")

    def missing(module: str) -> None:
        raise peers.MissingExtra(f"{module} is not installed; {peers.EXTRA_HINT}")

    monkeypatch.setattr(measure, "require", missing)
    rows = measure.measure_link("zenoh", "tcp", make_plan(True, sizes=(KIB, MIB)).sizes, warmup=1)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert all("oni-worldmodel[bench]" in r["reason"] and r["lost"] is None for r in rows)


def test_plans():
    quick, full = make_plan(True), make_plan(False)
    assert [s.nbytes for s in full.sizes] == [64, KIB, 100 * KIB, MIB, 4 * MIB]
    assert quick.soak_s == quick.fanout_s == 0 and full.soak_s == 60 and full.fanout_s > 0
    assert quick.peer_sizes == (KIB, MIB) and full.peer_sizes == tuple(s.nbytes for s in full.sizes)
    assert all(q.latency_count < f.latency_count for q, f in zip(quick.sizes, full.sizes))
    tiny = make_plan(True, sizes=(KIB,), messages=7)
    assert tiny.sizes[0].latency_count == tiny.sizes[0].burst_count == 7
    with pytest.raises(ValueError, match="unknown implementation"):
        make_plan(True, impls=("grpc",))
    with pytest.raises(ValueError, match="unknown transport"):
        make_plan(True, transports=("carrier_pigeon",))


def _recording(seqs: list[int], start_ns: int = 1_000_000) -> Recording:
    seq = np.asarray(seqs, dtype=np.int64)
    pub = start_ns + seq * 1000
    return Recording(seq, pub, pub + 50_000 + seq, {"gaps": 0})


def test_measurement_counts_only_measured_distinct_messages():
    # Seqs 0-1 are warm-up, 2..11 measured; 5 was lost and 7 arrived twice.
    run = Measurement(RunReport(2, 11, 10, 10, 0, 0.01), [_recording([0, 1, 2, 3, 4, 6, 7, 7, 8, 9, 10, 11])])
    assert run.received() == [9]
    assert run.lost() == 1
    latencies = run.latencies_us()
    assert latencies.size == 9 and np.allclose(latencies, 50.0, atol=0.02)
    assert run.msgs_per_s() == pytest.approx(9 * 1e9 / (11 * 1000 + 50_011 - 2 * 1000), rel=1e-6)
    fanout = Measurement(RunReport(0, 3, 4, 4, 0, 0.01), [_recording([0, 1, 2, 3]), _recording([0, 2, 3])])
    assert fanout.received() == [4, 3] and fanout.lost() == 1 and fanout.counters() == {"gaps": 0}
    nothing_sent = Measurement(RunReport(-1, -1, 5, 0, 0, 0.01), [_recording([0, 1])])
    assert nothing_sent.received() == [0] and nothing_sent.lost() == 5


def _row(impl: str, transport: str, nbytes: int, p50: float) -> dict:
    return {
        "impl": impl, "transport": transport, "payload_bytes": nbytes, "p50_us": p50, "p99_us": p50, "msgs_per_s": 1.0,
        "lost": 0, "status": "ok", "reason": "", "counters": {},
    }


def test_targets_are_judged_from_the_rows():
    rows = [
        _row("oni", "ipc", KIB, 60.0),
        _row("raw_zmq", "ipc", KIB, 50.0),
        _row("zenoh", "tcp", KIB, 80.0),
        _row("oni", "ipc", MIB, 900.0),
        _row("oni", "shm", MIB, 200.0),
        _row("oni", "ipc", 4 * MIB, 3000.0),
        _row("oni", "shm", 4 * MIB, 1500.0),
    ]
    clean = {"status": "ok", "seconds": 60.0, "lost": 0, "gaps": 0, "rejects": 0, "stale": 0, "passed": True}
    soak = {"reliable_1khz_1kb": clean}
    targets = {t["name"]: t for t in report.evaluate_targets(rows, soak, quick=False, elapsed_s=200.0)}
    assert targets["oni_vs_raw_zmq_1kb_ipc"]["value"] == pytest.approx(1.2)
    assert targets["oni_vs_raw_zmq_1kb_ipc"]["passed"] is True
    assert targets["oni_vs_zenoh_1kb"]["passed"] is True
    assert targets["oni_vs_cyclonedds_1kb"]["passed"] is None
    assert targets["shm_vs_ipc_1mb"]["value"] == pytest.approx(4.5) and targets["shm_vs_ipc_1mb"]["passed"]
    assert targets["shm_vs_ipc_4mb"]["passed"] is False
    assert targets["reliable_1khz_1kb_60s_lossless"]["passed"] is True
    assert targets["fanout_4mb_30hz_3subs_lossless"]["passed"] is None
    assert "quick_under_60s" not in targets


def test_json_is_replaced_atomically_and_the_table_lists_every_row(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    skipped = {**_row("zenoh", "tcp", KIB, 0.0), "status": "skipped", "reason": "not installed"}
    skipped.update(p50_us=None, lost=None)
    rows = [_row("oni", "ipc", KIB, 60.0), skipped]
    doc = {"mode": "quick", "elapsed_s": 1.0, "machine": {"cpu_count": 2}, "results": rows, "soak": {},
           "targets": report.evaluate_targets(rows, {}, quick=True, elapsed_s=1.0)}
    write_json(str(path), doc)
    assert json.loads(path.read_text())["results"][0]["impl"] == "oni"
    assert os.listdir(tmp_path) == ["r.json"]
    table = report.format_table(doc)
    assert "oni" in table and "skipped: not installed" in table and "PASS  quick_under_60s" in table
