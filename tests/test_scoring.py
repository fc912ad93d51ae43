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
from feedback.scoring import score_manifest


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
            assert rec["words"] == ref[rec["id"]]["words"]
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


def test_accelerate_two_processes(tiny_open_clip_dir, manifest, tmp_path):
    out = tmp_path / "sharded.jsonl"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
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
    ids = _ids(out)
    assert sorted(ids) == sorted(f"p{i}" for i in range(40)) and len(set(ids)) == 40
    assert not list(tmp_path.glob("sharded.jsonl.part*"))
