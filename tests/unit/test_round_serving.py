"""round.serve: a promoted round's adapter loaded on the endpoints under a stable name (the one
it replaces kept as '<name>-previous'), a rejected round changing nothing served, and
`alignloop round CFG --rollback ROUND` promoting an earlier round again (endpoints, then
`current`), against local stand-ins for vLLM's server (real HTTP)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from alignloop.loop.cli import main
from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.series import Round, RoundEntry, Series, rollback
from alignloop.policies.adapter import AdapterPayload
from tests.fake_completions_server import FakeCompletionsServer


def raw_config(tmp_path, urls, **round_opts) -> dict:
    return {
        "name": "nightly",
        "data": {"path": str(tmp_path / "prompts.jsonl")},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        "iterations": 1,
        "round": {"series_dir": str(tmp_path / "series"), "serve": {"urls": urls}, **round_opts},
    }


def config(tmp_path, urls, **round_opts):
    return validate_config(raw_config(tmp_path, urls, **round_opts))


def add_round(series: Series, round_id: str, status: str = "promoted") -> tuple[RoundEntry, AdapterPayload]:
    """A finished round with its adapter on disk, as Round.finish leaves it."""
    payload = AdapterPayload.create(int(round_id[1:]), f"weights {round_id}".encode(), {"r": 4})
    adapter_dir = series.round_dir(round_id) / "iter-0001" / "adapter"
    payload.write(adapter_dir)
    entry = RoundEntry(id=round_id, status=status, adapter_version=payload.version, adapter_sha256=payload.checksum)
    entry.adapter_dir = os.path.relpath(adapter_dir, series.root)
    series.put(entry)
    return entry, payload


def finish_round(series: Series, cfg, round_id: str, before=None, after=None):
    """Round.finish for a round whose training is done (its adapter written where finish looks)."""
    _, payload = add_round(series, round_id, status="running")
    return Round(series, cfg, series.get(round_id)).finish(payload, [], before, after)


def path_of(series: Series, round_id: str) -> str:
    return str((series.round_dir(round_id) / "iter-0001" / "adapter").resolve())


def served(server: FakeCompletionsServer) -> dict[str, str]:
    return {name: path for name, (path, _) in server.adapters.items()}


def test_a_promoted_round_is_served_with_the_previous_one_kept(tmp_path):
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        cfg = config(tmp_path, [a.url, b.url])
        series = Series(cfg.series_dir)
        first = finish_round(series, cfg, "r1")
        assert first.code == 0 and "served as current at 2 endpoint(s)" in first.message
        assert served(a) == served(b) == {"current": path_of(series, "r1")}
        second = finish_round(series, cfg, "r2")
        expect = {"current": path_of(series, "r2"), "current-previous": path_of(series, "r1")}
        assert served(a) == served(b) == expect
        summary = second.summary()["served"]
        assert summary["current"]["round"] == "r2" and summary["previous"]["round"] == "r1"
        assert summary["endpoints"] == {a.url: "ok", b.url: "ok"}
        assert json.loads((series.root / "served.json").read_text()) == summary


def test_a_rejected_round_changes_nothing_served(tmp_path):
    with FakeCompletionsServer() as a:
        cfg = config(tmp_path, [a.url])
        series = Series(cfg.series_dir)
        finish_round(series, cfg, "r1")
        record = (series.root / "served.json").read_text()
        gated = config(tmp_path, [a.url], eval={"path": str(tmp_path / "eval.jsonl")})
        out = finish_round(series, gated, "r2", before={"pass_rate": 0.9}, after={"pass_rate": 0.1})
        assert out.code == 4 and out.served is None
        assert served(a) == {"current": path_of(series, "r1")}
        assert (series.root / "served.json").read_text() == record
        assert series.promoted().id == "r1"


def test_rollback_serves_the_earlier_round_then_points_current_at_it(tmp_path):
    with FakeCompletionsServer() as a:
        cfg = config(tmp_path, [a.url])
        series = Series(cfg.series_dir)
        finish_round(series, cfg, "r1")
        finish_round(series, cfg, "r2")
        out = rollback(cfg, "r1")
        assert out.code == 0 and "rolled back: current is round r1 (v1) again" in out.message
        assert served(a) == {"current": path_of(series, "r1"), "current-previous": path_of(series, "r2")}
        assert os.path.realpath(series.current) == path_of(series, "r1")
        assert series.promoted().id == "r1"  # the next round starts from it
        # A round promoted after the rollback is current again, as always.
        finish_round(series, cfg, "r3")
        assert series.promoted().id == "r3"
        assert served(a) == {"current": path_of(series, "r3"), "current-previous": path_of(series, "r1")}


def test_rollback_refuses_a_round_that_was_never_promoted(tmp_path):
    with FakeCompletionsServer() as a:
        cfg = config(tmp_path, [a.url])
        series = Series(cfg.series_dir)
        finish_round(series, cfg, "r1")
        add_round(series, "r2", status="rejected")
        with pytest.raises(ConfigError, match=r"--rollback r2: .*its status is rejected.*promoted rounds: r1"):
            rollback(cfg, "r2")
        with pytest.raises(ConfigError, match=r"--rollback r9: .*no such round"):
            rollback(cfg, "r9")


def test_an_endpoint_down_is_named_and_current_is_kept_on_rollback(tmp_path):
    with FakeCompletionsServer() as a:
        dead = FakeCompletionsServer()
        dead.stop()
        cfg = config(tmp_path, [a.url, dead.url])
        series = Series(cfg.series_dir)
        out = finish_round(series, cfg, "r1")
        assert out.code == 7 and dead.url in out.message and "--rollback r1" in out.message
        assert series.promoted().id == "r1"  # the gate passed: promoted, served where it could be
        assert out.served["endpoints"][a.url] == "ok"
        finish_round(series, config(tmp_path, [a.url]), "r2")
        out = rollback(cfg, "r1")
        assert out.code == 7 and "current not changed" in out.message and dead.url in out.message
        assert os.path.realpath(series.current) == path_of(series, "r2") and series.promoted().id == "r2"


def test_cli_rollback_prints_what_is_served_where(tmp_path, capsys):
    with FakeCompletionsServer() as a:
        cfg = config(tmp_path, [a.url])
        series = Series(cfg.series_dir)
        finish_round(series, cfg, "r1")
        finish_round(series, cfg, "r2")
        path = tmp_path / "nightly.yaml"
        path.write_text(yaml.safe_dump(raw_config(tmp_path, [a.url])))
        assert main(["round", str(path), "--rollback", "r1", "--json"]) == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["round"] == "r1" and line["served"]["current"]["round"] == "r1"
        assert line["served"]["endpoints"] == {a.url: "ok"}
