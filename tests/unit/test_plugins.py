"""Hostile plugins (issue 22): a module that exits or raises while imported, options its
constructor does not take, and judge() calls that never return or exit. Each is a config error
when the config is validated, or a judge error in the run; never the run's exit code."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from alignloop.judges.plugins import PythonJudgeConfig, build_plugin
from alignloop.loop.config import ConfigError
from alignloop.loop.roles.judges import JudgeWorker
from alignloop.records import Judgment
from alignloop.records.secrets import register_secret
from tests.helpers import judge_all, judge_config

HERE = "tests.unit.test_plugins"
KEY = "sk-plugin0123456789abcdefXYZ"


class Fine:
    def __init__(self, word: str = "ok"):
        self.name, self.word = "fine", word

    async def judge(self, prompts, samples):
        return [
            Judgment(sample_id=s.id, verdict="positive", score=1.0, critique="Fine.", judge=self.name) for s in samples
        ]


class Needs:
    def __init__(self, limit: int, *, style: str = "plain"):
        self.name = "needs"

    async def judge(self, prompts, samples):
        return []


class TakesAnything:
    def __init__(self, **options):
        self.name, self.options = "any", options

    async def judge(self, prompts, samples):
        return []


# Released at the end of each test, so the abandoned threads end too.
RELEASE = threading.Event()
CANCELLED = threading.Event()


class Blocks:
    """judge() blocks its thread (no await): only a thread of its own keeps the caller going."""

    def __init__(self):
        self.name, self.calls = "blocks", 0

    async def judge(self, prompts, samples):
        self.calls += 1
        if self.calls == 1:
            RELEASE.wait()
        return [
            Judgment(sample_id=s.id, verdict="positive", score=1.0, critique="Late.", judge=self.name) for s in samples
        ]


class AwaitsForever:
    def __init__(self):
        self.name = "awaits"

    async def judge(self, prompts, samples):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            CANCELLED.set()
            raise
        return []


class Exits:
    def __init__(self):
        self.name = "exits"

    async def judge(self, prompts, samples):
        sys.exit(0)


@pytest.fixture(autouse=True)
def _release():
    RELEASE.clear()
    CANCELLED.clear()
    yield
    RELEASE.set()


def write_module(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"{name}:J"


@pytest.mark.parametrize(
    "body, message",
    [
        ("import sys\nsys.exit(0)\n", r"the module called sys.exit\(0\) while being imported"),
        ("import sys\nsys.exit('bye')\n", r"the module called sys.exit\('bye'\) while being imported"),
        ("raise RuntimeError('broken')\n", r"RuntimeError: 'broken'"),
        ("import no_such_module_anywhere\n", r"ModuleNotFoundError: \"No module named 'no_such_module_anywhere'\""),
    ],
)
def test_a_module_that_exits_or_raises_while_imported_is_a_config_error(tmp_path, monkeypatch, body, message):
    target = write_module(tmp_path, monkeypatch, "hostile_plugin_mod", body)
    with pytest.raises(ConfigError, match=f"cannot import 'hostile_plugin_mod' for judge target .*: {message}"):
        judge_config({"type": "python", "target": target})


def test_an_import_error_is_masked_and_short(tmp_path, monkeypatch):
    register_secret(KEY)
    body = f"raise ValueError('token {KEY} ' + 'x' * 10_000_000)\n"
    target = write_module(tmp_path, monkeypatch, "leaky_plugin_mod", body)
    with pytest.raises(ConfigError) as info:
        judge_config({"type": "python", "target": target})
    text = str(info.value)
    assert KEY not in text and "***" in text and len(text) < 1000
    assert "(10000035 characters)" in text


@pytest.mark.parametrize(
    "cls, options, message",
    [
        ("Fine", {"wrod": "x"}, r"Fine\(\) takes no option 'wrod'; it takes: word"),
        ("Needs", {}, r"Needs\(\) needs limit; set them under judge.options"),
        ("Needs", {"limit": 3, "colour": "red"}, r"takes no option 'colour'; it takes: limit, style"),
    ],
)
def test_options_the_constructor_does_not_take_fail_at_config_load(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        judge_config({"type": "python", "target": f"{HERE}:{cls}", "options": options})


def test_options_a_constructor_takes_as_keywords_pass():
    judge = build_plugin(judge_config({"type": "python", "target": f"{HERE}:TakesAnything", "options": {"a": 1}}))
    assert judge.options == {"a": 1} and judge.name == "any"
    judge_config({"type": "python", "target": f"{HERE}:Needs", "options": {"limit": 3, "style": "x"}})


def test_a_judge_call_that_blocks_becomes_a_judge_error_after_timeout_s_and_the_next_call_runs():
    cfg = judge_config({"type": "python", "target": f"{HERE}:Blocks", "timeout_s": 0.2})
    worker = JudgeWorker(cfg)
    samples, out = judge_all(worker, ["a", "b"])
    assert [j.sample_id for j in out] == [s.id for s in samples]
    assert all(j.error and "did not return within timeout_s=0.2 s" in j.error and j.judge == "blocks" for j in out)
    # The first call's thread is still blocked; the next call runs on a fresh one.
    _, again = judge_all(worker, ["c"])
    assert again[0].verdict == "positive" and again[0].error is None


def test_a_judge_call_that_awaits_forever_is_cancelled():
    judge = build_plugin(PythonJudgeConfig(target=f"{HERE}:AwaitsForever", timeout_s=0.2))
    _, out = judge_all(judge, ["a"])
    assert "did not return within timeout_s" in out[0].error
    assert CANCELLED.wait(timeout=30), "the abandoned call was never cancelled"


def test_sys_exit_inside_judge_is_a_judge_error_not_an_exit():
    worker = JudgeWorker(judge_config({"type": "python", "target": f"{HERE}:Exits"}))
    _, out = judge_all(worker, ["a"])
    assert out[0].error == "RuntimeError: judge() called sys.exit(0)"


def test_the_plugin_keeps_its_own_attributes_and_usage():
    judge = build_plugin(PythonJudgeConfig(target=f"{HERE}:Fine", options={"word": "w"}, name="mine"))
    assert (judge.name, judge.word) == ("mine", "w")
    assert not hasattr(judge, "usage")
    _, out = judge_all(judge, ["a"])
    assert out[0].judge == "mine" and out[0].verdict == "positive"
