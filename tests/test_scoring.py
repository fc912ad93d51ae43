"""`clip4dm score`: writes as it goes, resumes after a kill, shards with accelerate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from feedback import MisalignmentDetector
from feedback.batch import score_manifest


@pytest.fixture
def manifest(tmp_path, images):
    lines = []
    for i in range(40):
        im, cap = images[i % len(images)]
        path = tmp_path / f"im{i % len(images)}.png"
        if not path.exists():
            im.save(path)
        lines.append({"id": f"p{i}", "image": str(path), "caption": cap})
    lines[5]["image"] = str(tmp_path / "missing.png")  # a bad row must not stop the job
    m = tmp_path / "manifest.jsonl"
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return m


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_resume_repairs_torn_line_and_never_duplicates(tiny_open_clip_dir, manifest, tmp_path):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    out = tmp_path / "results.jsonl"
    full = score_manifest(det, manifest, tmp_path / "ref.jsonl", batch_size=8, progress=False)
    assert full.written == 40 and full.errors == 1
    ref = {
        json.loads(x)["id"]: json.loads(x)
        for x in (tmp_path / "ref.jsonl").read_text().splitlines()
    }
    assert "image not found" in ref["p5"]["error"]
    # every scored row says what scored it
    used = next(r["detector"] for r in ref.values() if "error" not in r)
    assert used == {
        "model": det.backend.name,
        "eps": det.config.threshold,
        "layers": det.config.layers,
        "mode": det.config.mode,
        "method": det.config.method,
        "template": det.config.template,
        "regions": False,
    }
    # Simulate a kill mid-write: 12 finished lines and half of the 13th.
    ref_lines = (tmp_path / "ref.jsonl").read_text().splitlines()
    out.write_text("\n".join(ref_lines[:12]) + "\n" + ref_lines[12][:20])
    s = score_manifest(det, manifest, out, batch_size=8, progress=False)
    assert s.skipped == 12 and s.written == 28
    ids = _ids(out)
    assert sorted(ids) == sorted(ref) and len(ids) == len(set(ids)) == 40
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        if "error" not in rec:
            # same words and verdicts; scores equal up to float rounding (a resumed run
            # batches rows differently, and BLAS kernels round by batch shape)
            got, want = rec["words"], ref[rec["id"]]["words"]
            assert [{**w, "score": None} for w in got] == [{**w, "score": None} for w in want]
            for g, w in zip(got, want):
                assert g["score"] == pytest.approx(w["score"], rel=1e-4, abs=1e-9)
    again = score_manifest(det, manifest, out, batch_size=8, progress=False)
    assert again.written == 0 and again.skipped == 40


def _score_cmd(model, manifest, out, *launcher):
    return [
        *launcher,
        "score",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--model",
        str(model),
        "--batch-size",
        "2",
    ]


@pytest.mark.slow
def test_killed_process_resumes(tiny_open_clip_dir, manifest, tmp_path):
    out = tmp_path / "killed.jsonl"
    cmd = _score_cmd(tiny_open_clip_dir, manifest, out, sys.executable, "-m", "feedback.cli")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes()) < 2000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(out.read_text().splitlines())
    assert 0 < before < 40
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.slow
def test_two_ranks_each_score_a_shard(tiny_open_clip_dir, manifest, tmp_path):
    """The README's sharding command: torchrun starts two gloo ranks (PartialState(cpu=True));
    each scores every other row into its own part, and rank 0 merges."""
    out = tmp_path / "sharded.jsonl"
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "feedback.cli",
    ]
    proc = subprocess.run(
        _score_cmd(tiny_open_clip_dir, manifest, out, *launch),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert sorted(s["process_index"] for s in summaries) == [0, 1]
    assert all(s["num_processes"] == 2 for s in summaries)
    # Both ranks did work, and between them every row exactly once.
    assert all(s["written"] > 0 for s in summaries)
    assert sum(s["written"] for s in summaries) == 40
    ids = _ids(out)
    assert sorted(ids) == sorted(f"p{i}" for i in range(40)) and len(set(ids)) == 40
    assert not list(tmp_path.glob("sharded.jsonl.part*"))


def test_manifest_problems_reported_at_once_and_good_rows_scored(
    tiny_open_clip_dir, manifest, tmp_path, capsys
):
    from generation.cli import main

    lines = manifest.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(10, json.dumps({"id": ["a", "list"], "image": "x.png", "caption": "a cat"}))
    lines.insert(20, lines[0])  # duplicate id
    lines.insert(25, json.dumps({"id": "q", "image": "x.png"}))
    lines.insert(30, "[1, 2]")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["score", "--data", str(bad), "--out", str(out), "--model", str(tiny_open_clip_dir)]
    assert main(args) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["invalid"] == 5 and len(summary["problems"]) == 5
    for n, what in [(4, "not JSON"), (11, "id must be"), (21, "duplicate id"), (26, "missing")]:
        assert f"bad.jsonl:{n}: {what}" in cap.err, cap.err
    assert summary["written"] == 40 and len(_ids(out)) == 40


def test_retry_errors_and_total_error_count(tiny_open_clip_dir, manifest, tmp_path):
    det = MisalignmentDetector.from_pretrained(str(tiny_open_clip_dir))
    out = tmp_path / "r.jsonl"
    first = score_manifest(det, manifest, out, batch_size=8, progress=False)
    assert first.errors == 1 and first.errors_total == 1
    again = score_manifest(det, manifest, out, batch_size=8, progress=False)
    # Nothing new failed, but the output still holds one error: the summary says so.
    assert again.errors == 0 and again.errors_total == 1 and again.written == 0
    # Fix the missing image, then retry only the failed row.
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    images = [r["image"] for r in rows if r["id"] != "p5"]
    rows[5]["image"] = images[0]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    retried = score_manifest(det, manifest, out, batch_size=8, progress=False, retry_errors=True)
    assert retried.written == 1 and retried.errors == 0 and retried.errors_total == 0
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.parametrize(
    "case, expect",
    [
        ("batch0", "must be >= 1"),
        ("out-dir", "directory"),
        ("corrupt-results", "r.jsonl:2: not a result line"),
    ],
)
def test_score_bad_options_one_line(case, expect, tiny_open_clip_dir, manifest, tmp_path, capsys):
    from generation.cli import main

    out = tmp_path / "r.jsonl"
    args = ["score", "--data", str(manifest), "--model", str(tiny_open_clip_dir)]
    if case == "batch0":
        args += ["--out", str(out), "--batch-size", "0"]
    elif case == "out-dir":
        args += ["--out", str(tmp_path)]
    else:
        out.write_text('{"id": "p0", "cosine": 0.1}\ngarbage in the middle\n{"id": "p1"}\n')
        args += ["--out", str(out)]
    try:
        code = main(args)
    except SystemExit as e:  # argparse rejects a bad value itself, with exit 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and expect in err, err
    assert "Traceback" not in err
    if case == "corrupt-results":
        assert "garbage" in out.read_text()  # finished results are never thrown away
