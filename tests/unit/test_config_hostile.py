"""Hostile configs (issue 22): duplicate keys, YAML alias bombs, huge or secret values in a bad
field, and `--set` keys that do not index anything. Each is a ConfigError that names the file
and line or the field, quotes at most a short masked prefix of a value, and costs little."""

from __future__ import annotations

import pytest

from alignloop.loop.config import ConfigError, apply_override, load_config, validate_config
from alignloop.loop.config.reader import MAX_NODES, expanded_size, load_yaml
from alignloop.records.secrets import register_secret

HEAD = "name: t\ndata: {path: p.jsonl}\n"
KEY = "sk-hostile0123456789abcdefXYZ"


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def bomb(levels: int = 9, field: str = "extra_body") -> str:
    """A "billion laughs" document of about 600 bytes: 10**levels strings once expanded."""
    lines = [f"  {field}:", '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"    a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "judge",
    [
        "judge:\n  type: openai\n  model: m\n  base_url: http://127.0.0.1:9/v1\n",
        "judge:\n  type: python\n  target: tests.unit.test_plugins:TakesAnything\n",
    ],
)
def test_an_alias_bomb_in_a_free_form_field_is_refused_before_validation(tmp_path, judge):
    field = "extra_body" if "openai" in judge else "options"
    path = write(tmp_path, HEAD + judge + bomb(field=field))
    assert path.stat().st_size < 800
    with pytest.raises(ConfigError, match=f"{path}: it holds more than 100,000 values once its aliases"):
        load_config(path)


def test_aliases_that_stay_small_load_and_merge_keys_override():
    doc = load_yaml("base: &b {type: rules, checks: []}\njudge: {<<: *b, type: rules}\nother: [*b, *b]\n")
    assert doc["judge"] == {"type": "rules", "checks": []} and doc["other"] == [doc["base"], doc["base"]]


def test_expanded_size_counts_every_alias_once_per_use():
    from yaml import SafeLoader, compose

    node = compose("a: &x [1, 2]\nb: [*x, *x, *x]\n", Loader=SafeLoader)
    # mapping 1 + keys 2 + [1, 2] 3 + b's list 1 + three copies of 3 = 16
    assert expanded_size(node, MAX_NODES) == 16
    assert expanded_size(compose("&a [*a]", Loader=SafeLoader), MAX_NODES) == MAX_NODES + 1


def test_a_list_that_holds_itself_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="an alias holds itself"):
        load_config(write(tmp_path, HEAD + "judge: &j {type: rules, checks: [*j]}\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            HEAD + "name: u\njudge: {type: rules}\n",
            r"config.yaml:3: duplicate key 'name' \(first at line 1\); keep one",
        ),
        (HEAD + "judge: {type: rules, type: rules}\n", r"config.yaml:3: duplicate key 'type' \(first at line 3\)"),
        (
            HEAD + "judge:\n  type: rules\n  checks:\n    - {type: max_words, limit: 3}\n  checks: []\n",
            r"config.yaml:7: duplicate key 'checks' \(first at line 5\)",
        ),
    ],
)
def test_duplicate_keys_name_the_file_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_nesting_too_deep_for_the_parser_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(write(tmp_path, HEAD + "judge: {type: rules}\nx: " + "[" * 100_000 + "]" * 100_000 + "\n"))


def test_invalid_yaml_is_masked(tmp_path):
    register_secret(KEY)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, HEAD + f"judge: {{type: rules\napi: {KEY}: [\n"))
    assert "not valid YAML" in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize("field", ["name", "seed", "model.dtype", "judging.actors", "judge.type"])
def test_a_bad_value_is_quoted_short_and_masked(field):
    register_secret(KEY)
    raw = {
        "name": "t",
        "data": {"path": "p.jsonl"},
        "judge": {"type": "rules", "checks": [{"type": "max_words", "limit": 3}]},
    }
    node = raw
    *parents, last = field.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = f"{KEY} " + "x" * 50_000_000
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    text = str(info.value)
    assert len(text) < 2000 and KEY not in text and "(50000030 characters)" in text, text


def test_a_key_pasted_as_a_field_name_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        validate_config({"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "rules"}, KEY: 1})
    assert KEY not in str(info.value) and "unknown field" in str(info.value)


@pytest.mark.parametrize(
    "item, message",
    [
        ("judge.checks.١.limit=3", r"--set: judge.checks.١: index '١' is not in a list of 1 item\(s\); use 0 to 0"),
        ("judge.checks.²=3", r"index '²' is not in a list"),
        ("judge.checks.-1=3", r"index '-1' is not in a list"),
        ("judge.checks.7.limit=3", r"index '7' is not in a list of 1 item"),
        ("judge.checks.x=3", r"index 'x' is not in a list"),
        ("learner..lr=1", r"--set learner..lr: a name between dots is empty"),
        (".lr=1", r"a name between dots is empty"),
        ("lr.=1", r"a name between dots is empty"),
        ("=1", r"expected KEY=VALUE"),
        ("name.first=1", r"name is a value, not a section"),
        ("judge.x={a: 1, a: 2}", r"--set judge.x: duplicate key 'a'"),
        ("judge.x=&a [*a]", r"--set judge.x: it holds more than 100,000 values once its aliases"),
    ],
)
def test_bad_overrides_name_the_key(item, message):
    raw = {"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "rules", "checks": [{"type": "max_words"}]}}
    with pytest.raises(ConfigError, match=message):
        apply_override(raw, item)


def test_an_override_into_an_empty_section_makes_it():
    raw = {"name": "t", "model": None}
    apply_override(raw, "model.path=x")
    assert raw["model"] == {"path": "x"}


def test_an_override_into_an_empty_list():
    with pytest.raises(ConfigError, match="index '0': the list is empty"):
        apply_override({"a": []}, "a.0=1")


def test_a_long_override_key_is_quoted_short():
    with pytest.raises(ConfigError) as info:
        apply_override({"name": "t"}, "name." + "k" * 1_000_000 + "=1")
    assert len(str(info.value)) < 300
