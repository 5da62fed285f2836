"""bench/compare_ct2.py: the two engines' timed runs alternate, and each round's ratio is kept."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    pytest.importorskip("ctranslate2")
    spec = importlib.util.spec_from_file_location("compare_ct2", ROOT / "bench" / "compare_ct2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_alternating_interleaves_and_keeps_every_round(monkeypatch):
    mod = _load()
    clock = iter([0.0, 2.0, 2.0, 3.0, 3.0, 7.0, 7.0, 9.0])  # a: 2 s, b: 1 s, then a: 4 s, b: 2 s
    monkeypatch.setattr(mod.time, "perf_counter", lambda: next(clock))
    calls = []
    best_a, out_a, best_b, out_b, ratios = mod.time_alternating(
        lambda: calls.append("a") or "A", lambda: calls.append("b") or "B", repeat=2)
    assert calls == ["a", "b", "a", "b"]
    assert (best_a, out_a, best_b, out_b) == (2.0, "A", 1.0, "B")
    assert ratios == [0.5, 0.5]  # seconds of b / seconds of a, per round
