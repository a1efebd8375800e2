"""Progress in log files: a plain line every few percent, not carriage-return fragments."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detection.progress import LineProgress, format_seconds, progress, progress_mode

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr("detection.progress.time.perf_counter", c)
    return c


def test_lines_every_five_percent_and_a_final_line(clock):
    out = io.StringIO()
    p = LineProgress(range(200), desc="detect val", unit="img", file=out)
    for _ in p:
        clock.t += 0.5  # 0.5 s per image: 100 s in all
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # 5 %, 10 %, ..., 95 % (19 lines) and the final one
    assert len(lines) == 20, lines
    assert lines[0].startswith("detect val: 10/200 (5%) 5s elapsed, 0.50 s/img, ETA 1m35s")
    assert lines[9].startswith("detect val: 100/200 (50%)")
    assert lines[-1] == "detect val: 200/200 (100%) 1m40s elapsed, 0.50 s/img - done"


def test_fast_loops_stay_quiet_until_min_seconds(clock):
    out = io.StringIO()
    with LineProgress(total=1000, desc="scan", unit="img", file=out, leave=False) as p:
        for _ in range(1000):
            clock.t += 0.001  # one second in all: under min_seconds, and leave=False drops the final line
            p.update()
    assert out.getvalue() == ""


def test_update_and_postfix_with_unknown_total(clock):
    out = io.StringIO()
    p = LineProgress(total=None, desc="train", unit="step", file=out, interval=60)
    for _ in range(10):
        clock.t += 30
        p.update()
    p.set_postfix(loss="0.123")
    p.close()
    p.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 6  # every 60 s (5 lines) + the final one
    assert lines[-1] == "train: 10 step 5m00s elapsed, 30.00 s/step - done [loss=0.123]"


def test_disabled_prints_nothing(clock):
    out = io.StringIO()
    for _ in LineProgress(range(50), file=out, disable=True):
        clock.t += 10
    assert out.getvalue() == ""


def test_mode_follows_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv("DET_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_mode(io.StringIO()) == "lines"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_mode(Tty()) == "bar"
    monkeypatch.setenv("DET_PROGRESS", "lines")
    assert progress_mode(Tty()) == "lines"
    assert isinstance(progress(range(3), file=Tty()), LineProgress)
    monkeypatch.setenv("DET_PROGRESS", "off")
    assert progress(range(3)).disable
    monkeypatch.setenv("DET_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="DET_PROGRESS"):
        progress_mode()


def test_format_seconds():
    assert [format_seconds(s) for s in (7, 243, 7500, float("nan"))] == ["7s", "4m03s", "2h05m", "?"]


def test_a_redirected_tool_log_has_no_carriage_returns(tiny_voc, tmp_path):
    """The real case: a tool run with its output in a file (extract_proposals on the tiny VOC folder)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DET_PROGRESS", "TQDM_DISABLE")}
    r = subprocess.run([sys.executable, "tools/extract_proposals.py", "dataset=voc", f"dataset.root={tiny_voc}",
                        "dataset.name=tiny", "proposals=rcnn", "proposals.selective_search.resize_width=128",
                        "workers=1", f"cache_dir={tmp_path / 'cache'}"], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr and "\r" not in r.stdout
    assert "4 images computed" in r.stdout and "1 skipped" in r.stdout
