from __future__ import annotations

import json

import pytest

from alignloop.loop.data import DataError, PromptStream, load_prompts

ROOT_PROMPTS = "configs/prompts/quickstart.jsonl"


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_instruction_input_and_messages_rows(tmp_path):
    p = write(
        tmp_path,
        [
            json.dumps({"id": "a", "instruction": "Sum these.", "input": "1 2", "reference": "3"}),
            json.dumps({"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]}),
            json.dumps({"instruction": "Hello", "system": "Be kind."}),
        ],
    )
    a, b, c = load_prompts(p)
    assert a.id == "a" and a.messages[-1].content == "Sum these.\n\n1 2" and a.meta == {"reference": "3"}
    assert b.id == "d-2" and [m.role for m in b.messages] == ["system", "user"]
    assert c.messages[0].content == "Be kind." and c.instruction == "Hello"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        ('{"text": "x"}', "d.jsonl:2: needs `messages` (a chat) or `instruction`"),
        ('{"instruction": ""}', "d.jsonl:2: `instruction` must be a non-empty string"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "d.jsonl:2: bad `messages`"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "d.jsonl:2: `messages` must end with a user turn"),
        ('{"id": "a", "instruction": "again"}', "d.jsonl:2: duplicate id 'a' (first at line 1)"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, expected):
    p = write(tmp_path, [json.dumps({"id": "a", "instruction": "ok"}), line])
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_prompts(p)


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "instruction": ["one", ""]}), p)
    with pytest.raises(DataError, match="d.parquet:2: `instruction` must be a non-empty string"):
        load_prompts(p)


def test_missing_file_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match="set data.path"):
        load_prompts(tmp_path / "nope.jsonl")


def test_shipped_quickstart_prompts_load():
    prompts = load_prompts(ROOT_PROMPTS)
    assert len(prompts) >= 200 and len({p.id for p in prompts}) == len(prompts)


def test_stream_uses_every_prompt_once_before_reuse():
    s = PromptStream(10, 3, seed=1)
    drawn = [s.next_batch() for _ in range(10)]  # 30 draws = 3 full passes
    flat = [i for b in drawn for i in b]
    for start in range(0, 30, 10):
        assert sorted(flat[start : start + 10]) == list(range(10))
    assert all(len(set(b)) == len(b) for b in drawn), "a batch crossing a pass boundary repeated a prompt"
    assert flat[:10] != flat[10:20], "the second pass was not reshuffled"


def test_stream_state_resumes_exactly():
    a = PromptStream(7, 3, seed=5)
    a.next_batch()
    a.next_batch()
    b = PromptStream(7, 3, seed=5, state=json.loads(json.dumps(a.state())))
    assert [a.next_batch() for _ in range(5)] == [b.next_batch() for _ in range(5)]


def test_stream_refuses_batches_larger_than_dataset():
    with pytest.raises(DataError, match="set it to at most 4"):
        PromptStream(4, 5, seed=0)


def test_a_saved_hf_dataset_with_a_column_mapping(tmp_path):
    datasets = pytest.importorskip("datasets")
    from alignloop.loop.config import validate_config
    from alignloop.loop.data import load_data

    rows = {"qid": ["a", "b"], "question": ["What is 2+2?", "Name a colour."], "answer": ["4", "red"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    cfg = validate_config(
        {
            "name": "t",
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "data": {"path": str(tmp_path / "ds"), "columns": {"id": "qid", "instruction": "question"}},
        }
    )
    a, b = load_data(cfg.data)
    assert (a.id, a.instruction, a.meta) == ("a", "What is 2+2?", {"answer": "4"}) and b.instruction == "Name a colour."

    with pytest.raises(DataError, match=r"no split 'test' in the saved dataset \(it has \['train'\]\); set data.split"):
        load_data(cfg.data.model_copy(update={"split": "test"}))
    with pytest.raises(DataError, match=r"ds\[train\]:1: data.columns names \['prompt'\], which the row does not have"):
        load_data(cfg.data.model_copy(update={"columns": {"instruction": "prompt"}}))
    datasets.Dataset.from_dict({"question": ["ok", ""]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[train\]:2: `instruction` must be a non-empty string"):
        load_data(cfg.data.model_copy(update={"path": str(tmp_path / "bad"), "columns": {"instruction": "question"}}))


def test_a_hub_dataset_without_network_is_a_data_error(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # Both libraries read the variables once, at import, and an earlier test has imported
    # them: without these the loader asks huggingface.co, retrying for about 23 s offline.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError, match=r"hf:nobody/nothing: could not load split 'train' from the Hugging Face hub .*save_to_disk"
    ):
        load_prompts("hf:nobody/nothing")


def test_deeply_nested_rows_are_refused_with_their_line(tmp_path):
    """1000 levels end Python's JSON decoder (RecursionError); 150 decode, but the run could
    not save them (the serializer stops at 255 levels with the Prompt around them)."""
    ok = json.dumps({"instruction": "hi", "deep": json.loads("[" * 99 + "]" * 99)})
    p = write(tmp_path, [ok, "[" * 100000 + "]" * 100000])
    with pytest.raises(DataError, match=r"d.jsonl:2: nested too deeply; a row may nest .* at most 100 levels"):
        load_prompts(p)
    p = write(tmp_path, [ok, json.dumps({"instruction": "hi", "deep": json.loads("[" * 150 + "]" * 150)})])
    with pytest.raises(DataError, match=r"d.jsonl:2: nested more than 100 levels deep"):
        load_prompts(p)
    (first,) = load_prompts(write(tmp_path, [ok]))
    assert first.model_dump_json()  # the deepest row allowed is one a run can save


@pytest.mark.parametrize("damage", ["no arrow file", "truncated arrow file", "no state.json", "broken dataset_info"])
def test_a_damaged_saved_dataset_is_a_data_error_naming_it(tmp_path, damage):
    datasets = pytest.importorskip("datasets")
    ds = tmp_path / "ds"
    datasets.Dataset.from_dict({"instruction": ["a", "b"] * 50}).save_to_disk(str(ds))
    (arrow,) = ds.glob("*.arrow")
    if damage == "no arrow file":
        arrow.unlink()
    elif damage == "truncated arrow file":
        arrow.write_bytes(arrow.read_bytes()[:300])
    elif damage == "no state.json":
        (ds / "state.json").unlink()
    else:
        (ds / "dataset_info.json").write_text("{")
    with pytest.raises(DataError, match=rf"{ds}: a damaged or partly written `save_to_disk` directory"):
        load_prompts(ds)
