"""`alignloop report` and `alignloop status` on damaged or hostile run directories: exit 2 with
the file, line or field named, never a traceback; long responses cut on the page. The run
directories are written by hand (no Ray, no model); the report of a real run is
tests/integration/test_report.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.loop.cli import main
from alignloop.loop.report import SHOWN_CHARS
from alignloop.loop.store import RunState, RunStore, write_jsonl
from alignloop.records import Judgment, Message, Prompt, Sample


def fake_run(root: Path, iterations: int = 2, response: str = "Paris.") -> RunStore:
    """A finished run directory as alignloop writes it: state, metrics, each iteration's records."""
    store = RunStore(root)
    root.mkdir(parents=True)
    store.save_state(RunState(iteration=iterations, adapter_version=iterations))
    rows = []
    for i in range(1, iterations + 1):
        d = store.iter_dir(i)
        prompts = [Prompt(id=f"p{k}", messages=[Message(role="user", content=f"Question {k}?")]) for k in range(2)]
        samples = [Sample(id=f"p{k}#0", prompt_id=f"p{k}", response=response, policy_version=i - 1) for k in range(2)]
        verdicts = ["positive", "negative"]
        judgments = [
            Judgment(sample_id=s.id, verdict=v, score=float(k), critique="Too long." if k else None, judge="rules")
            for k, (s, v) in enumerate(zip(samples, verdicts))
        ]
        write_jsonl(d / "prompts.jsonl", prompts)
        write_jsonl(d / "samples.jsonl", samples)
        write_jsonl(d / "judgments.jsonl", judgments)
        rows.append(
            {"iteration": i, "pass_rate": 0.5, "mean_score": 0.5, "loss": 1.0 / i, "n_train": 2, "sample_s": 0.1}
        )
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return store


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


def set_line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "line2, expected",
    [
        ('{"iteration": 2, "pass_rate": "x"}', "metrics.jsonl:2: `pass_rate` is 'x', not a number"),
        ('{"iteration": null, "pass_rate": 0.5}', "metrics.jsonl:2: `iteration` is None, not a positive integer"),
        ('{"pass_rate": 0.5}', "metrics.jsonl:2: no `iteration`, not a positive integer"),
        ('{"iteration": "2"}', "metrics.jsonl:2: `iteration` is '2', not a positive integer"),
        ('{"iteration": 2, "sample_s": [1]}', "metrics.jsonl:2: `sample_s` is [1], not a number"),
        ('{"iteration": 2, "loss": {"a": 1}}', "metrics.jsonl:2: `loss` is {'a': 1}, not a number"),
        ("[1, 2]", "metrics.jsonl:2: not a JSON object but [1, 2]"),
    ],
)
def test_status_and_report_on_metrics_of_the_wrong_types(tmp_path, capsys, line2, expected):
    store = fake_run(tmp_path / "run")
    set_line(store.root / "metrics.jsonl", 2, line2)
    refused(*cli(capsys, "status", str(store.root))[::2], expected)
    refused(*cli(capsys, "report", str(store.root))[::2], expected)
    assert not (store.root / "report").exists(), "nothing written for a report that failed"


def test_status_shows_a_count_saved_as_a_float(tmp_path, capsys):
    store = fake_run(tmp_path / "run", iterations=1)
    set_line(store.root / "metrics.jsonl", 1, '{"iteration": 1, "n_train": 3.0, "tokens_sampled": 2.5}')
    code, out, err = cli(capsys, "status", str(store.root))
    assert code == 0, err
    assert out.splitlines()[-1].split()[:7] == ["1", "-", "-", "-", "3", "-", "2.500"]


def test_status_on_a_series_file_of_the_wrong_types(tmp_path, capsys):
    (tmp_path / "series.json").write_text(json.dumps({"rounds": [{"id": "a", "train": {"pass_rate": "x"}}]}))
    refused(*cli(capsys, "status", str(tmp_path))[::2], "series.json: damaged series file", "rounds.0.train.pass_rate")
    refused(*cli(capsys, "report", str(tmp_path))[::2], "series.json: damaged series file", "rounds.0.train.pass_rate")


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("samples.jsonl: not JSON", "iter-0002/samples.jsonl:2: not a Sample record (Invalid JSON"),
        ("samples.jsonl: no response", "iter-0002/samples.jsonl:1: not a Sample record (response: Field required)"),
        ("judgments.jsonl: bad verdict", "iter-0002/judgments.jsonl:1: not a Judgment record (verdict: Input should"),
        ("no last iteration", "iter-0002/samples.jsonl: missing; the run directory is incomplete"),
        ("no judgments.jsonl", "iter-0002/judgments.jsonl: missing"),
    ],
)
def test_report_on_damaged_iteration_records(tmp_path, capsys, damage, expected):
    store = fake_run(tmp_path / "run")
    d = store.iter_dir(2)
    if damage == "samples.jsonl: not JSON":
        set_line(d / "samples.jsonl", 2, '{"id": "p1#0", "prompt_id": ')
    elif damage == "samples.jsonl: no response":
        set_line(d / "samples.jsonl", 1, '{"id": "p0#0", "prompt_id": "p0", "policy_version": 1}')
    elif damage == "judgments.jsonl: bad verdict":
        set_line(d / "judgments.jsonl", 1, '{"sample_id": "p0#0", "verdict": "great", "judge": "rules"}')
    elif damage == "no last iteration":
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    else:
        (d / "judgments.jsonl").unlink()
    refused(*cli(capsys, "report", str(store.root), "--out", str(tmp_path / "r"))[::2], expected)
    assert not (tmp_path / "r").exists()


def test_report_out_that_is_a_file_or_under_one(tmp_path, capsys):
    store = fake_run(tmp_path / "run", iterations=1)
    (tmp_path / "f").write_text("mine")
    refused(*cli(capsys, "report", str(store.root), "--out", str(tmp_path / "f"))[::2], "is a file, not a directory")
    code, _, err = cli(capsys, "report", str(store.root), "--out", str(tmp_path / "f" / "r"))
    refused(code, err, "--out", "cannot write the report there")
    assert (tmp_path / "f").read_text() == "mine"


def test_report_cuts_a_long_response_and_says_how_long_it_was(tmp_path, capsys):
    long = "word " * 2_000_000  # 10 MB
    store = fake_run(tmp_path / "run", iterations=1, response=long)
    code, _, err = cli(capsys, "report", str(store.root), "--out", str(tmp_path / "r"))
    assert code == 0, err
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"cut here: {len(long):,} characters in all" in page
    assert len(page) < 4 * SHOWN_CHARS * 4 + 400_000, "two cards of each kind, each cut, and six plots"
