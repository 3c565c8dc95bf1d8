"""Pieces of nightly rounds that need no Ray: prompt sources, the ledger, the gate, the series
file. The lock between processes and the CLI's exit codes are tests/integration/test_series.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.data import DataError, load_prompts, prompt_files
from alignloop.loop.exits import Exit
from alignloop.loop.series import RoundEntry, Series, gate_verdict, round_config, run_round
from alignloop.loop.store import RunStore
from tests.helpers import write_instructions as write


def test_data_path_is_a_file_a_directory_a_glob_or_a_round_placeholder(tmp_path):
    write(tmp_path / "d" / "b.jsonl", "two")
    write(tmp_path / "d" / "a.jsonl", "one")
    (tmp_path / "d" / "notes.txt").write_text("not prompts")
    assert [p.name for p in prompt_files(tmp_path / "d")] == ["a.jsonl", "b.jsonl"]
    assert [p.id for p in load_prompts(str(tmp_path / "d" / "*.jsonl"))] == ["a-1", "b-1"]
    assert [p.id for p in load_prompts(str(tmp_path / "d" / "{round}.jsonl"), round_id="b")] == ["b-1"]
    with pytest.raises(DataError, match=r"\{round\} placeholder; it is filled in by `alignloop round`"):
        load_prompts(str(tmp_path / "d" / "{round}.jsonl"))
    with pytest.raises(DataError, match="holds no .jsonl or .parquet prompt file"):
        load_prompts(str(tmp_path / "d" / "*.parquet"))
    with pytest.raises(DataError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_an_id_in_two_files_names_both(tmp_path):
    write(tmp_path / "a.jsonl", "one", ids=["x"])
    write(tmp_path / "b.jsonl", "two", "three", ids=["y", "x"])
    with pytest.raises(DataError, match=r"b.jsonl:2: duplicate id 'x' \(first at .*a.jsonl:1\)"):
        load_prompts(str(tmp_path / "*.jsonl"))


def test_the_ledger_skips_what_other_rounds_drew_by_content(tmp_path):
    series = Series(tmp_path / "s")
    night1 = load_prompts(write(tmp_path / "n1.jsonl", "alpha", "beta"))
    series.record_drawn("n1", night1)
    night2 = load_prompts(write(tmp_path / "n2.jsonl", "beta", "gamma", "gamma", ids=["other-id", "g1", "g2"]))
    assert [p.id for p in series.new_prompts(night2, "n2")] == ["g1"], (
        "same text under another id is not new, nor a repeat"
    )
    assert [p.id for p in series.new_prompts(night1, "n1")] == ["n1-1", "n1-2"], "a round's own draw stays its own"
    series.record_drawn("n1", night1)  # a rerun records its draw once
    assert len(series.ledger()) == 2


def test_gate_verdicts():
    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "round": {"eval": {"path": "e.jsonl", "margin": 0.05}},
        }
    )
    assert gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": 0.46})[0] is True, "within the margin"
    ok, why = gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": 0.4})
    assert not ok and "fell 0.500 -> 0.400, more than the margin 0.05; current stays" in why
    ok, why = gate_verdict(cfg, {"pass_rate": 0.5}, {"pass_rate": None})
    assert not ok and "gave no pass_rate" in why
    plain = cfg.model_copy(update={"round": cfg.round.model_copy(update={"eval": None})})
    assert gate_verdict(plain, None, None) == (True, "promoted (no eval gate configured)")


def test_a_round_is_an_ordinary_run_of_its_drawn_prompts(tmp_path):
    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p/{round}.jsonl", "prompts_per_iteration": 16},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        }
    )
    rcfg = round_config(cfg, tmp_path / "rounds" / "r1", n_prompts=5)
    assert rcfg.resolved_run_dir == tmp_path / "rounds" / "r1"
    assert rcfg.data.path == str(tmp_path / "rounds" / "r1" / "prompts.jsonl") and rcfg.data.prompts_per_iteration == 5
    assert cfg.series_dir == Path("runs/t")


def test_series_file_round_trip_and_damage(tmp_path):
    series = Series(tmp_path)
    series.put(RoundEntry(id="a", status="promoted", iterations=2, adapter_version=2))
    series.put(RoundEntry(id="b", status="rejected", iterations=1, adapter_version=3))
    series.put(RoundEntry(id="c"))
    assert series.promoted().id == "a" and series.iterations_done() == 3
    series.path.write_text("{not json")
    with pytest.raises(Exception, match="damaged series file"):
        series.rounds()


def test_state_json_of_an_older_run_still_loads(tmp_path):
    store = RunStore(tmp_path)
    store.state_path.write_text(
        json.dumps({"iteration": 2, "step": "learn", "adapter_version": 2, "adapter_checksum": "abc", "data": {}})
    )
    state = store.load_state()
    assert (state.base, state.origin, state.last_learned()) == (0, None, 2)


@pytest.mark.parametrize(
    "rounds, where",
    [
        ([{"id": "a", "n_prompts": "3"}], r"rounds.0.n_prompts: Input should be a valid integer, got '3'"),
        ([{"id": "a"}, {"id": "b", "iterations": None}], r"rounds.1.iterations: .* got None"),
        ([{"id": "a", "train": {"pass_rate": "x"}}], r"rounds.0.train.pass_rate: 'x' is not a number"),
        ([{"id": "a", "eval_after": {"pass_rate": [1]}}], r"rounds.0.eval_after.pass_rate: \[1\] is not a number"),
        ([{"id": "../../elsewhere"}], r"rounds.0.id: '../../elsewhere' is not a round id"),
        ([{"status": "promoted"}], r"rounds.0.id: Field required"),
        ({"a": 1}, r"rounds: Input should be a valid array"),
    ],
)
def test_a_series_file_with_wrong_types_names_the_field(tmp_path, rounds, where):
    series = Series(tmp_path)
    series.path.write_text(json.dumps({"rounds": rounds}))
    with pytest.raises(ConfigError, match=rf"series.json: damaged series file \({where}"):
        series.rounds()


def test_no_new_prompts_leaves_no_series_directory(tmp_path):
    """Exit 5, "nothing to do", writes nothing: not even the series directory (its lock)."""
    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": str(tmp_path / "nightly" / "{round}.jsonl")},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "round": {"series_dir": str(tmp_path / "series")},
        }
    )
    result = run_round(cfg, "2026-12-01")
    assert result.code == Exit.NO_NEW_PROMPTS and "no new prompts" in result.message
    assert not (tmp_path / "series").exists()
    (tmp_path / "series").mkdir()  # an existing series is locked while it is asked
    assert run_round(cfg, "2026-12-01").code == Exit.NO_NEW_PROMPTS
    assert [p.name for p in (tmp_path / "series").iterdir()] == [".lock"]
