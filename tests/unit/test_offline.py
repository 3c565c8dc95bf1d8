"""Offline training data: the official CUT format and alignloop's own records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignloop.loop.data import DataError
from alignloop.loop.offline import load_examples
from alignloop.loop.store import write_jsonl
from alignloop.records import Judgment, Message, Prompt, Sample

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, rows, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_cut_format_verdicts_from_judgment_and_score(tmp_path):
    p = write(
        tmp_path,
        [
            {"instruction": "Name a fruit.", "input": "", "output": "Apple.", "judgment": None},
            {"instruction": "Add.", "input": "1 2", "output": "4", "judgment": "The sum is wrong; 1 + 2 = 3."},
            {"instruction": "Greet.", "output": "Hello!", "judgment": "Fine, could be warmer.", "score": 8},
            {"instruction": "Greet.", "output": "Go away.", "judgment": "Rude.", "score": 2},
        ],
    )
    ex = load_examples(p)
    assert [e.judgment.verdict for e in ex] == ["positive", "negative", "positive", "negative"]
    assert ex[1].prompt.messages[-1].content == "Add.\n\n1 2" and ex[1].judgment.critique.startswith("The sum")
    assert ex[0].sample.token_ids is None and ex[3].judgment.score == 2.0
    assert len({e.prompt.id for e in ex}) == 4


def test_bad_rows_are_all_reported_with_file_and_line(tmp_path):
    p = write(
        tmp_path,
        [
            {"instruction": "ok", "output": "fine", "judgment": None},
            "{oops",
            {"instruction": "x", "judgment": None},
            {"instruction": "x", "output": "y"},
            {"instruction": "x", "output": "y", "judgment": "bad", "score": "high"},
            {"instruction": "x", "output": "", "judgment": None},
        ],
    )
    with pytest.raises(DataError) as e:
        load_examples(p)
    msg = str(e.value)
    assert "5 bad row(s)" in msg
    for line, what in [
        (2, "not valid JSON"),
        (3, "missing `output`"),
        (4, "missing `judgment`"),
        (5, "`score` must be a number"),
        (6, "`output` must be a non-empty string"),
    ]:
        assert f"t.jsonl:{line}: {what}" in msg


def test_alignloop_records_and_run_directories(tmp_path):
    prompt = Prompt(id="p", messages=[Message(role="user", content="q")])
    samples = [Sample(id=f"s{i}", prompt_id="p", response=f"r{i}", policy_version=0) for i in range(3)]
    judgments = [
        Judgment(sample_id="s0", verdict="negative", critique="No.", judge="j"),
        Judgment(sample_id="s1", verdict="positive", judge="j"),
        Judgment(sample_id="s2", judge="j", error="Timeout"),
    ]  # no signal: not a training row
    d = tmp_path / "run" / "iter-0001"
    d.mkdir(parents=True)
    write_jsonl(d / "prompts.jsonl", [prompt])
    write_jsonl(d / "samples.jsonl", samples)
    write_jsonl(d / "judgments.jsonl", judgments)
    assert [e.sample.id for e in load_examples(tmp_path / "run")] == ["s0", "s1"]
    assert [e.sample.id for e in load_examples(d)] == ["s0", "s1"]
    rows = write(
        tmp_path,
        [{"prompt": prompt.model_dump(), "sample": samples[0].model_dump(), "judgment": judgments[0].model_dump()}],
    )
    assert load_examples(rows)[0].judgment.critique == "No."


def test_out_takes_only_a_new_or_empty_directory_or_an_earlier_trains_output(tmp_path, monkeypatch):
    from alignloop.loop.config import ConfigError
    from alignloop.loop.offline import OUT_MARKER, check_out_dir

    check_out_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    earlier = tmp_path / "earlier"  # what train wrote before the marker existed, and since
    earlier.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_metrics.json"):
        (earlier / name).write_text("x")
    check_out_dir(earlier)
    (earlier / "train_metrics.json").unlink()
    (earlier / OUT_MARKER).write_text("x")
    check_out_dir(earlier)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "train_metrics.json").write_text("{}")
    (tmp_path / "file.txt").write_text("data")
    (tmp_path / "link").symlink_to(earlier)
    peft = tmp_path / "peft"  # someone's adapter from elsewhere: no train_metrics.json, no marker
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "empty")
    for out, what in [
        (mine, "holds files alignloop train did not write (thesis.tex)"),
        (tmp_path / "file.txt", "is a file"),
        (tmp_path / "link", "is a symlink"),
        (peft, "did not write (adapter_config.json)"),
        (tmp_path / "empty", "is the current directory"),
        (tmp_path / "run", None),
    ]:
        if what is None:  # a run directory: train would replace the whole run
            from alignloop.loop.store import mark_run_dir

            mark_run_dir(out)
            what = "did not write (.alignloop-run)"
        with pytest.raises(ConfigError, match=re.escape(what)):
            check_out_dir(out)
    assert (mine / "thesis.tex").read_text() == "years of work" and (tmp_path / "file.txt").read_text() == "data"


def test_train_refuses_its_out_directory_before_it_trains(tmp_path):
    from alignloop.loop.config import ConfigError, validate_config
    from alignloop.loop.offline import train

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    cfg = validate_config(
        {"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "rules", "checks": [{"type": "finished"}]}}
    )
    with pytest.raises(ConfigError, match="--out .*out: holds files"):
        train(cfg, str(tmp_path / "no-such-data.jsonl"), str(tmp_path / "out"))  # no data, no model: refused first
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep"
