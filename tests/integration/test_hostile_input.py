"""Hostile input, table-driven: each case is one `alignloop` command as a new user or an
attacker would type it, with the exit code it must end in. Around every case the test
snapshots the whole playground (the user's own files, a finished run, a series, a home and a
working directory), then checks that

- the exit code is the expected one, and no traceback reaches the screen where it was not a crash;
- nothing that existed before was deleted or changed, except what the case may change;
- a planted key (in the environment, in URLs, in files, echoed by servers) appears in no output
  and in no file that alignloop wrote;
- every file alignloop wrote is readable by its owner only.

The docs' reliability page lists the same cases (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_prompts
from tests.helpers import run_in_process

pytestmark = pytest.mark.integration

KEY = "sk-proj-HOSTILEplanted0123456789abcd"
ENV_KEY = "ALIGNLOOP_HOSTILE_KEY"


@dataclass(frozen=True)
class World:
    """The playground one case runs in (a fresh copy per case)."""

    root: Path
    model: Path

    @property
    def user(self) -> Path:  # a directory of the user's own files
        return self.root / "user"

    @property
    def run(self) -> Path:  # a finished alignloop run
        return self.root / "run"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    def config(self, name: str = "c", **over) -> str:
        """A tiny config (its run directory is `<root>/<name>-run`), with `over` merged in."""
        raw = tiny_config(self.model, self.prompts, self.root / f"{name}-run")
        for key, value in over.items():
            # a block with its own `type` (a judge) replaces the default; other sections merge
            merge = isinstance(value, dict) and "type" not in value and key in raw
            raw[key] = {**raw[key], **value} if merge else value
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def text(self, name: str, text: str | bytes) -> str:
        path = self.root / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def plugin(self, module: str, source: str) -> str:
        (self.root / "plugins" / f"{module}.py").write_text(source)
        return f"{module}:Judge"


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[World], list[str]]
    code: int
    says: str = ""  # a piece of the message (stderr) the user must see
    may_change: tuple[str, ...] = ()  # paths under the playground the command may change or add to


# A judge plugin that works, for the cases that break one thing about it.
GOOD_PLUGIN = """
from alignloop.records import Judgment
class Judge:
    name = "ok"
    def __init__(self, limit: int = 3):
        self.limit = limit
    async def judge(self, prompts, samples):
        return [Judgment(sample_id=s.id, judge=self.name, verdict="satisfactory", score=1.0) for s in samples]
"""


def bomb(indent: str, levels: int = 9) -> str:
    """A YAML alias bomb ("billion laughs") as the block of a free-form mapping field: about
    500 bytes that expand to 10**levels strings."""
    lines = [f'{indent}a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def bombed(w: World, name: str, judge: str) -> str:
    """A config whose judge block (YAML text, ending in a free-form field's key) holds a bomb."""
    return w.text(f"{name}.yaml", f"name: t\ndata: {{path: {w.prompts}}}\njudge:\n{judge}{bomb('    ')}")


def openai(w: World, **over) -> dict:
    return {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": ENV_KEY, **over}


def run_dir_file(w: World, *parts: str) -> Path:
    return w.run.joinpath(*parts)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_jsonl(path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in change(rows)))


def last_iter(w: World) -> Path:
    return sorted(w.run.glob("iter-*"))[-1]


def then(setup: Callable[[World], object], argv: list[str] | Callable[[World], list[str]]):
    """argv after a setup step that damages or plants something in the playground."""

    def build(w: World) -> list[str]:
        setup(w)
        return argv(w) if callable(argv) else argv

    return build


def nested_json(depth: int = 100_000) -> str:
    return '{"instruction": ' + "[" * depth + "]" * depth + "}\n"


def a_save_to_disk_dir(w: World, broken: bool) -> str:
    d = w.root / "hfdata"
    d.mkdir()
    (d / "dataset_info.json").write_text("{}")
    (d / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    (d / "data-00000-of-00001.arrow").write_bytes(b"ARROW1 torn" if broken else b"")
    return str(d)


def damage(path_of: Callable[[World], Path], text: str) -> Callable[[World], None]:
    return lambda w: path_of(w).write_text(text)


CASES: list[Case] = [
    # -- the config file itself --------------------------------------------------------------
    Case("config missing", lambda w: ["run", str(w.root / "nope.yaml")], 2, "nope.yaml"),
    Case("config is a directory", lambda w: ["run", str(w.user)], 2, "is a directory"),
    Case("config empty", lambda w: ["run", w.text("empty.yaml", "")], 2, "empty.yaml"),
    Case("config is a list", lambda w: ["run", w.text("list.yaml", "- a\n- b\n")], 2, "list.yaml"),
    Case("config not UTF-8", lambda w: ["run", w.text("l1.yaml", b"name: caf\xe9\n")], 2, "not UTF-8"),
    Case("config YAML syntax error", lambda w: ["run", w.text("syn.yaml", "name: [unclosed\n")], 2, "syn.yaml"),
    Case("duplicate YAML keys", lambda w: ["run", w.text("dup.yaml", "name: a\nname: b\n")], 2, "name"),
    Case(
        "alias bomb in judge.extra_body",
        lambda w: ["run", bombed(w, "bomb", "  type: openai\n  model: m\n  api_key_env: null\n  extra_body:\n")],
        2,
        "alias",
    ),
    Case("unknown top-level key", lambda w: ["run", w.config(learnr={"lr": 1})], 2, "learnr"),
    Case("unknown nested key", lambda w: ["run", w.config(learner={"lrr": 1.0})], 2, "learner.lrr"),
    Case("wrong type", lambda w: ["run", w.config(learner={"lr": "fast"})], 2, "learner.lr"),
    Case("a key pasted into a number field", lambda w: ["run", w.config(learner={"lr": KEY})], 2, "learner.lr"),
    Case("a key pasted as api_key_env", lambda w: ["run", w.config(judge=openai(w, api_key_env=KEY))], 2, "API key"),
    Case(
        "a 5 MB bad value is quoted short",
        lambda w: ["run", w.config(learner={"lr": "x" * 5_000_000})],
        2,
        "characters)",
    ),
    # -- --set and flags -----------------------------------------------------------------------
    Case("--set unknown key", lambda w: ["run", w.config(), "--set", "learner.nope=1"], 2, "learner.nope"),
    Case("--set without =", lambda w: ["run", w.config(), "--set", "learner.lr"], 2, "KEY=VALUE"),
    Case(
        "--set non-ASCII digit index",
        lambda w: ["run", w.config(), "--set", "judge.checks.\u0661.limit=3"],
        2,
        "index '١'",
    ),
    Case("--set index out of range", lambda w: ["run", w.config(), "--set", "judge.checks.9.limit=3"], 2, "use 0 to 0"),
    Case("--set wrong type", lambda w: ["run", w.config(), "--set", "iterations=many"], 2, "iterations"),
    Case("--resume with --overwrite", lambda w: ["run", w.config(), "--resume", "--overwrite"], 2, "contradict"),
    # -- run directories -----------------------------------------------------------------------
    Case("--overwrite /", lambda w: ["run", w.config(), "--set", "run_dir=/", "--overwrite"], 2, "filesystem root"),
    Case(
        "--overwrite home",
        lambda w: ["run", w.config(), "--set", f"run_dir={w.home}", "--overwrite"],
        2,
        "home directory",
    ),
    Case(
        "--overwrite cwd",
        lambda w: ["run", w.config(), "--set", f"run_dir={w.cwd}", "--overwrite"],
        2,
        "current directory",
    ),
    Case(
        "--overwrite a directory of user files",
        lambda w: ["run", w.config(), "--set", f"run_dir={w.user}", "--overwrite"],
        2,
        "not an alignloop run directory",
    ),
    Case(
        "run into a directory holding the user's config.yaml",
        then(
            lambda w: (w.user / "config.yaml").write_text("mine"),
            lambda w: ["run", w.config(), "--set", f"run_dir={w.user}"],
        ),
        2,
        "not an alignloop run directory",
    ),
    Case(
        "run_dir is a file",
        lambda w: ["run", w.config(), "--set", f"run_dir={w.user / 'notes.txt'}"],
        2,
        "is a file, not a directory",
    ),
    Case(
        "run into a finished run without --resume",
        lambda w: ["run", w.config(), "--set", f"run_dir={w.run}"],
        2,
        "--resume",
    ),
    Case(
        "--resume with a wrongly typed state.json field",
        then(
            lambda w: edit_json(run_dir_file(w, "state.json"), lambda s: s.update(iteration="x")),
            lambda w: ["run", w.config(), "--set", f"run_dir={w.run}", "--resume"],
        ),
        2,
        "state.json",
    ),
    Case(
        "--resume with a truncated state.json",
        then(
            damage(lambda w: run_dir_file(w, "state.json"), '{"iteration": 1, "st'),
            lambda w: ["run", w.config(), "--set", f"run_dir={w.run}", "--resume"],
        ),
        2,
        "state.json",
    ),
    # -- judges: URLs, keys, plugins -----------------------------------------------------------
    Case("base_url garbage", lambda w: ["run", w.config(judge=openai(w, base_url="not a url"))], 2, "base_url"),
    Case(
        "base_url file://", lambda w: ["run", w.config(judge=openai(w, base_url="file:///etc/passwd"))], 2, "base_url"
    ),
    Case("base_url ftp://", lambda w: ["run", w.config(judge=openai(w, base_url="ftp://h/v1"))], 2, "base_url"),
    Case(
        "base_url with credentials, no port, unreachable",
        lambda w: ["run", w.config(judge=openai(w, base_url=f"http://user:{KEY}@127.0.0.1/v1"))],
        2,
        "cannot reach",
    ),
    Case(
        "base_url with credentials and a port, unreachable",
        lambda w: ["run", w.config(judge=openai(w, base_url=f"http://user:{KEY}@127.0.0.1:9/v1"))],
        2,
        "cannot reach",
    ),
    Case(
        "token-only base_url, unreachable",
        lambda w: ["run", w.config(judge=openai(w, base_url=f"http://{KEY}@127.0.0.1:9/v1"))],
        2,
        "cannot reach",
    ),
    Case(
        "api_key_env names an unset variable",
        lambda w: ["run", w.config(judge=openai(w, api_key_env="ALIGNLOOP_NO_SUCH_VAR"))],
        2,
        "ALIGNLOOP_NO_SUCH_VAR",
    ),
    Case(
        "plugin module missing",
        lambda w: ["run", w.config(judge={"type": "python", "target": "no_such_mod:Judge"})],
        2,
        "no_such_mod",
    ),
    Case(
        "plugin class missing",
        lambda w: [
            "run",
            w.config(judge={"type": "python", "target": w.plugin("p_ok", GOOD_PLUGIN).replace("Judge", "Nope")}),
        ],
        2,
        "Nope",
    ),
    Case(
        "plugin raises at import, with a key in the message",
        lambda w: [
            "run",
            w.config(judge={"type": "python", "target": w.plugin("p_raise", f"raise RuntimeError('{KEY}')")}),
        ],
        2,
        "p_raise",
    ),
    Case(
        "plugin calls sys.exit(0) at import",
        lambda w: ["run", w.config(judge={"type": "python", "target": w.plugin("p_exit", "import sys\nsys.exit(0)")})],
        2,
        "p_exit",
    ),
    Case(
        "plugin options its constructor does not take",
        lambda w: [
            "run",
            w.config(judge={"type": "python", "target": w.plugin("p_opts", GOOD_PLUGIN), "options": {"nope": 1}}),
        ],
        2,
        "nope",
    ),
    Case(
        "alias bomb in plugin options",
        lambda w: ["run", bombed(w, "pb", f"  type: python\n  target: {w.plugin('p_b', GOOD_PLUGIN)}\n  options:\n")],
        2,
        "alias",
    ),
    # -- data ------------------------------------------------------------------------------------
    Case("data missing", lambda w: ["run", w.config(data={"path": str(w.root / "none.jsonl")})], 2, "none.jsonl"),
    Case(
        "data row not JSON",
        lambda w: ["run", w.config(data={"path": w.text("bad.jsonl", '{"instruction": "a"}\n{oops\n')})],
        2,
        "bad.jsonl:2",
    ),
    Case(
        "data row without an instruction",
        lambda w: ["run", w.config(data={"path": w.text("noi.jsonl", '{"text": "a"}\n')})],
        2,
        "noi.jsonl:1",
    ),
    Case(
        "data row nested 100000 deep",
        lambda w: ["run", w.config(data={"path": w.text("deep.jsonl", nested_json())})],
        2,
        "deep.jsonl:1",
    ),
    Case(
        "data not UTF-8",
        lambda w: ["run", w.config(data={"path": w.text("l1.jsonl", b'{"instruction": "caf\xe9"}\n')})],
        2,
        "not UTF-8",
    ),
    Case(
        "data a broken parquet file",
        lambda w: ["run", w.config(data={"path": w.text("b.parquet", "PAR1 not parquet")})],
        2,
        "b.parquet",
    ),
    Case(
        "data a torn save_to_disk directory",
        lambda w: ["run", w.config(data={"path": a_save_to_disk_dir(w, broken=True)})],
        2,
        "hfdata",
    ),
    # -- the model -------------------------------------------------------------------------------
    Case("model path missing", lambda w: ["run", w.config(model={"path": str(w.root / "nomodel")})], 2, "nomodel"),
    Case("model dir without config.json", lambda w: ["run", w.config(model={"path": str(w.user)})], 2, "config.json"),
    Case(
        "model.adapter missing",
        lambda w: ["run", w.config(), "--set", f"model.adapter={w.root / 'noadapter'}"],
        2,
        "noadapter",
    ),
    Case(
        "lora.target_modules the model lacks",
        lambda w: ["run", w.config(), "--set", "model.lora.target_modules=[nope_proj]"],
        2,
        "nope_proj",
    ),
    Case(
        "max_new_tokens beyond the context",
        lambda w: ["run", w.config(), "--set", "sampler.max_new_tokens=1000000"],
        2,
        "max_new_tokens",
    ),
    Case(
        "a prompt longer than the context",
        lambda w: [
            "run",
            w.config(
                data={
                    "path": w.text("long.jsonl", json.dumps({"id": "long", "instruction": "cat " * 5000}) + "\n"),
                    "prompts_per_iteration": 1,
                }
            ),
        ],
        2,
        "long.jsonl",
    ),
    # -- train -------------------------------------------------------------------------------------
    Case(
        "train --out a directory of user files",
        lambda w: ["train", w.config(), "--data", str(w.run), "--out", str(w.user)],
        2,
        "user",
    ),
    Case(
        "train --out a file",
        lambda w: ["train", w.config(), "--data", str(w.run), "--out", str(w.user / "notes.txt")],
        2,
        "notes.txt",
    ),
    Case(
        "train --data missing", lambda w: ["train", w.config(), "--data", str(w.root / "none.jsonl")], 2, "none.jsonl"
    ),
    Case(
        "train with a missing model",
        lambda w: ["train", w.config(model={"path": str(w.root / "nomodel")}), "--data", str(w.run)],
        2,
        "nomodel",
    ),
    Case(
        "train on a run without judgments.jsonl",
        then(
            lambda w: (last_iter(w) / "judgments.jsonl").unlink(), lambda w: ["train", w.config(), "--data", str(w.run)]
        ),
        2,
        "judgments.jsonl",
    ),
    Case(
        "train on a run with an orphan sample",
        then(
            lambda w: edit_jsonl(last_iter(w) / "judgments.jsonl", lambda rows: rows[1:]),
            lambda w: ["train", w.config(), "--data", str(w.run)],
        ),
        2,
        "judgment",
    ),
    # -- rounds ------------------------------------------------------------------------------------
    Case("round id ..", lambda w: ["round", w.config(), "--round", "..", "--json"], 2, "round"),
    Case("round id with a slash", lambda w: ["round", w.config(), "--round", "a/b", "--json"], 2, "round"),
    Case("round id empty", lambda w: ["round", w.config(), "--round", "", "--json"], 2, "round"),
    # -- status ------------------------------------------------------------------------------------
    Case("status of a user directory", lambda w: ["status", str(w.user)], 2, "not a run directory"),
    Case(
        "status with wrongly typed metrics",
        then(
            lambda w: edit_jsonl(w.run / "metrics.jsonl", lambda rows: [{**r, "pass_rate": "x"} for r in rows]),
            lambda w: ["status", str(w.run)],
        ),
        2,
        "metrics.jsonl",
    ),
    Case(
        "status with a metrics.jsonl symlink loop",
        then(
            lambda w: (
                (w.run / "metrics.jsonl").unlink(),
                (w.run / "metrics.jsonl").symlink_to(w.run / "metrics.jsonl"),
            ),
            lambda w: ["status", str(w.run)],
        ),
        2,
        "metrics.jsonl",
    ),
    Case(
        "status of a series.json with wrong types",
        then(lambda w: (w.user / "series.json").write_text('{"rounds": 3}'), lambda w: ["status", str(w.user)]),
        2,
        "series.json",
    ),
    # -- report ------------------------------------------------------------------------------------
    Case(
        "report on a malformed samples.jsonl",
        then(damage(lambda w: last_iter(w) / "samples.jsonl", "{torn\n"), lambda w: ["report", str(w.run)]),
        2,
        "samples.jsonl",
    ),
    Case(
        "report with the last iteration directory missing",
        then(lambda w: shutil.rmtree(last_iter(w)), lambda w: ["report", str(w.run)]),
        2,
        "iter-",
    ),
    Case(
        "report with metrics rows without iteration",
        then(
            lambda w: edit_jsonl(
                w.run / "metrics.jsonl", lambda rows: [{k: v for k, v in r.items() if k != "iteration"} for r in rows]
            ),
            lambda w: ["report", str(w.run)],
        ),
        2,
        "metrics.jsonl",
    ),
    Case(
        "report of a 5 MB response: cut, owner-only",
        then(
            lambda w: edit_jsonl(
                last_iter(w) / "samples.jsonl", lambda rows: [{**rows[0], "response": "cat " * 1_250_000}] + rows[1:]
            ),
            lambda w: ["report", str(w.run), "--out", str(w.root / "rep")],
        ),
        0,
    ),
    Case("status of a finished run (the baseline)", lambda w: ["status", str(w.run)], 0),
    Case(
        "--dry-run with credentials in a URL",
        lambda w: ["run", w.config(judge=openai(w, base_url=f"https://user:{KEY}@example.invalid/v1")), "--dry-run"],
        0,
    ),
    Case("report --out a file", lambda w: ["report", str(w.run), "--out", str(w.user / "notes.txt")], 2, "notes.txt"),
    Case("report of a user directory", lambda w: ["report", str(w.user)], 2, "neither a run directory"),
]


# ----------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under root: a digest of its bytes (or its link target) and its mode."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root)) + ("/" if path.is_dir() and not path.is_symlink() else "")
        if path.is_symlink():
            out[rel] = ("-> " + os.readlink(path), 0)
        elif path.is_file():
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
        else:
            out[rel] = ("dir", 0)
    return out


# What libraries write for themselves under $HOME (matplotlib's font list): not alignloop's files.
THIRD_PARTY = ("home/.cache/matplotlib/", "home/.config/matplotlib/")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model) -> Path:
    """One finished tiny run, written once and copied into every case's playground."""
    from alignloop.loop.config import validate_config

    root = tmp_path_factory.mktemp("finished")
    prompts = write_prompts(root / "prompts.jsonl")
    run_in_process(validate_config(tiny_config(tiny_model, prompts, root / "run")))
    return root / "run"


@pytest.fixture
def world(tmp_path, tiny_model, finished) -> World:
    w = World(tmp_path / "w", tiny_model)
    for d in ("user", "cwd", "home", "plugins"):
        (w.root / d).mkdir(parents=True)
    (w.user / "notes.txt").write_text("my notes\n")
    (w.user / "data.csv").write_text("a,b\n1,2\n")
    (w.cwd / "keep.txt").write_text("keep\n")
    (w.home / ".bashrc").write_text("# mine\n")
    write_prompts(w.prompts)
    shutil.copytree(finished, w.run, symlinks=True)
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, world: World):
    argv = case.argv(world)  # may plant or damage files first: those are part of "before"
    before = snapshot(world.root)
    env = {
        **os.environ,
        ENV_KEY: KEY,
        "HOME": str(world.home),
        "ALIGNLOOP_CACHE": str(world.root / "cache"),
        "PYTHONPATH": str(world.root / "plugins"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "alignloop", *argv],
        cwd=world.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = out.stdout + out.stderr
    assert out.returncode == case.code, said[-3000:]
    assert case.says in out.stderr, out.stderr[-3000:]
    if case.code != 1:
        assert "Traceback" not in said, said[-3000:]
    assert len(out.stderr) < 20_000, "an error message must quote a short prefix, not a whole value"
    assert KEY not in said

    after = snapshot(world.root)
    for rel, was in before.items():
        if not (case.may_change and rel.startswith(case.may_change)):
            assert after.get(rel) == was, f"{rel} was deleted or changed"
    for rel in after.keys() - before.keys():
        path = world.root / rel
        if rel.startswith(THIRD_PARTY):
            continue
        if path.is_file() and not path.is_symlink():
            assert KEY.encode() not in path.read_bytes(), f"{rel} holds the planted key"
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{rel} is readable by others ({oct(mode)})"
    if case.name.startswith("report of a 5 MB"):  # the page shows a prefix, not the whole response
        assert (world.root / "rep" / "report.html").stat().st_size < 1_000_000
    if argv[0] == "round" and "--json" in argv:  # a scheduler reads this line, whatever happened
        line = json.loads(out.stdout.strip().splitlines()[-1])
        assert line["code"] == case.code


def test_the_reliability_page_lists_every_case():
    page = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in page.splitlines() if line.count("|") >= 4
    }
    for case in CASES:
        assert rows.get(case.name) == str(case.code), f"docs/reliability.md: no row `| {case.name} | {case.code} |`"
    assert len(CASES) >= 60
