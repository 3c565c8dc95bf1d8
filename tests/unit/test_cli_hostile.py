"""A crash (a bug) in any command: exit 1 with its traceback, masked like every other text on
its way to the user, and `round --json` prints its line first."""

from __future__ import annotations

import json

import pytest
import yaml

from alignloop.loop import cli
from alignloop.loop.exits import Exit
from alignloop.records.secrets import register_secret

KEY = "sk-live-abcdefghijklmnopqrstuvwxyz0123"  # the shape of an OpenAI key
PLAIN = "correct-horse-battery-staple"  # a secret of no known shape, read from the environment


def explode(*args, **kwargs):
    raise RuntimeError(f"the server said: bad key {KEY} (and {PLAIN})")


def config(tmp_path):
    path = tmp_path / "c.yaml"
    raw = {
        "name": "t",
        "data": {"path": str(tmp_path / "{round}.jsonl")},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        "round": {"series_dir": str(tmp_path / "series")},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", ["status", "report", "round --json"])
def test_a_crash_prints_its_traceback_masked(tmp_path, capsys, monkeypatch, command):
    register_secret(PLAIN)
    monkeypatch.setattr(cli, "show_status", explode)
    monkeypatch.setattr("alignloop.loop.report.write_report", explode)
    monkeypatch.setattr("alignloop.loop.api.run_round", explode)
    args = {"status": ["status", str(tmp_path)], "report": ["report", str(tmp_path)]}.get(
        command, ["round", str(config(tmp_path)), "--round", "r1", "--json"]
    )
    code = cli.main(args)
    out = capsys.readouterr()
    assert code == Exit.CRASH
    assert "Traceback (most recent call last)" in out.err and "RuntimeError: the server said: bad key ***" in out.err
    assert KEY not in out.err + out.out and PLAIN not in out.err + out.out
    if command == "round --json":  # the scheduler's line, before the traceback
        assert json.loads(out.out.splitlines()[-1]) == {"series": str(tmp_path / "series"), "code": 1, "round": "r1"}


def test_an_interrupt_is_not_a_crash(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "show_status", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["status", str(tmp_path)])


def test_an_error_message_quoting_a_key_is_masked(tmp_path, capsys):
    """A bad record's error echoes the bad value (pydantic's message does): on stderr, masked."""
    data = tmp_path / "d.jsonl"
    prompt = {"id": "p", "messages": [{"role": KEY, "content": "hi"}]}
    sample = {"id": "s", "prompt_id": "p", "response": "r", "policy_version": 0}
    data.write_text(json.dumps({"prompt": prompt, "sample": sample, "judgment": {"sample_id": "s", "judge": "j"}}))
    code = cli.main(["train", str(config(tmp_path)), "--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == Exit.CONFIG and "d.jsonl:1: bad alignloop record" in err and "***" in err, err
    assert KEY not in err


def test_a_sampler_serving_other_weights_stops_the_run_resumably(capsys):
    """An inference server whose probe log-probs disagree with the learner's (another model
    behind the adapter's name) stops the run like a lost actor, with its message, not a crash."""
    from alignloop.policies.adapter import AdapterMismatch

    def work():
        raise AdapterMismatch("http://srv:8000 serves adapter run-v2, but its probe log-probs differ")

    assert cli.guarded(work) == Exit.ACTOR_LOST
    err = capsys.readouterr().err
    assert "serves adapter run-v2" in err and "--resume" in err and "Traceback" not in err
