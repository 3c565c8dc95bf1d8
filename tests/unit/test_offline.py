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


def iteration_dir(tmp_path) -> Path:
    """iter-0001 of a run: two prompts, a sample each, a judgment each."""
    d = tmp_path / "run" / "iter-0001"
    d.mkdir(parents=True)
    prompts = [Prompt(id=f"p{k}", messages=[Message(role="user", content=f"q{k}")]) for k in range(2)]
    samples = [Sample(id=f"s{k}", prompt_id=f"p{k}", response=f"r{k}", policy_version=0) for k in range(2)]
    write_jsonl(d / "prompts.jsonl", prompts)
    write_jsonl(d / "samples.jsonl", samples)
    write_jsonl(d / "judgments.jsonl", [Judgment(sample_id=s.id, verdict="positive", judge="j") for s in samples])
    return d


def drop_line(path: Path, n: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: n - 1] + lines[n:]))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("no judgments.jsonl", r"iter-0001/judgments.jsonl: missing \(was the iteration judged"),
        ("a sample without its judgment", r"iter-0001/samples.jsonl: sample 's1' with no judgment"),
        ("a judgment without its sample", r"iter-0001/judgments.jsonl: judgment of sample 's1' with no sample"),
        ("a sample without its prompt", r"iter-0001/samples.jsonl: sample 's0' with no prompt"),
        ("a malformed sample", r"iter-0001/samples.jsonl:2: not a Sample record \(Invalid JSON"),
        ("no samples.jsonl", r"iter-0001/samples.jsonl: missing"),
    ],
)
def test_an_incomplete_or_edited_run_directory_is_refused(tmp_path, damage, expected):
    d = iteration_dir(tmp_path)
    if damage == "no judgments.jsonl":
        (d / "judgments.jsonl").unlink()
    elif damage == "a sample without its judgment":
        drop_line(d / "judgments.jsonl", 2)
    elif damage == "a judgment without its sample":
        drop_line(d / "samples.jsonl", 2)
    elif damage == "a sample without its prompt":
        drop_line(d / "prompts.jsonl", 1)
    elif damage == "a malformed sample":
        (d / "samples.jsonl").write_text((d / "samples.jsonl").read_text().splitlines()[0] + "\n{oops\n")
    else:
        (d / "samples.jsonl").unlink()
        (d / "judgments.jsonl").write_text("")
    with pytest.raises(DataError, match=expected):
        load_examples(tmp_path / "run")
    assert len(load_examples(iteration_dir(tmp_path / "intact"))) == 2


def test_a_deeply_nested_cut_row_is_a_bad_row(tmp_path):
    p = write(tmp_path, [{"instruction": "x", "output": "y", "judgment": None}, "[" * 100000 + "]" * 100000])
    with pytest.raises(DataError, match=r"t.jsonl:2: nested too deeply"):
        load_examples(p)


def test_train_refuses_a_missing_model_or_adapter_before_loading_anything(tmp_path, capsys):
    """Exit 2 naming the field, before any model is loaded (and nothing written to --out)."""
    from alignloop.loop.cli import main

    data = write(tmp_path, [{"instruction": "x", "output": "y", "judgment": None}])
    (tmp_path / "not-a-model").mkdir()
    fake_model = tmp_path / "model"  # passes the model's preflight; the adapter's check comes first
    fake_model.mkdir()
    (fake_model / "config.json").write_text("{}")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "adapter_config.json").write_text("{}")
    (damaged / "adapter_model.safetensors").write_text("not safetensors")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {"name": "t", "data": {"path": str(data)}, "judge": {"type": "rules", "checks": [{"type": "finished"}]}}
        )
    )
    for overrides, expected in [
        ([f"model.path={tmp_path / 'missing'}"], "is neither an embedded model"),
        ([f"model.path={tmp_path / 'not-a-model'}"], "is a directory but not a Hugging Face model"),
        ([f"model.path={fake_model}", f"model.adapter={tmp_path / 'none'}"], "model.adapter '" + str(tmp_path)),
        ([f"model.path={fake_model}", f"model.adapter={damaged}"], "not a readable PEFT adapter (SafetensorError"),
    ]:
        sets = [a for o in overrides for a in ("--set", o)]
        code = main(["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "out"), *sets])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_model_directory_that_cannot_be_loaded_is_model_not_found(tmp_path):
    from alignloop.policies.model import ModelNotFound, load_model, load_tokenizer

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFound, match=r"cannot load its tokenizer \(OSError: .*not a valid JSON file"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"cannot load the model \(OSError"):
        load_model(str(tmp_path))
