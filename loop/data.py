"""Prompt data: loading JSONL/Parquet rows into Prompts, and the per-iteration prompt stream.

Sources: JSONL/Parquet files (a file, a directory or a glob), a Hugging Face `datasets`
dataset saved with `save_to_disk`, or `hf:<hub id>` (needs network). `data.columns` maps a
dataset's own field names to this schema's.

Row schema (one JSON object per line, one Parquet row, or one dataset row):
    id           optional string; default "<file stem>-<line number>"
    messages     a chat: [{"role": "system"|"user"|"assistant", "content": str}, ...]
    instruction  instead of `messages`: the user turn; `input` (optional) is appended after a
                 blank line, as in Alpaca-style data; `system` (optional) adds a system turn
    anything else is kept in `meta` (e.g. a reference answer for a judge)
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from alignloop.records import Message, Prompt
from alignloop.records.errors import read_utf8

R = TypeVar("R", bound=BaseModel)


class DataError(Exception):
    """A bad dataset: the message names the file and the line (or row) at fault."""


PROMPT_SUFFIXES = (".jsonl", ".parquet")


def prompt_files(path: str | Path, round_id: str | None = None) -> list[Path]:
    """The files `data.path` names: a file, a directory (its .jsonl/.parquet files) or a glob,
    sorted by name; `{round}` in it becomes the round id (nightly rounds)."""
    text = str(path)
    if "{round}" in text:
        if round_id is None:
            raise DataError(f"data.path {text!r} has a {{round}} placeholder; it is filled in by `alignloop round`")
        text = text.replace("{round}", round_id)
    p = Path(text)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in PROMPT_SUFFIXES and f.is_file())
        where = f"directory {p}"
    elif any(c in text for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        where = f"glob {text!r}"
    else:
        raise DataError(f"{p}: no such prompt file (set data.path to a .jsonl or .parquet file, a directory or a glob)")
    if not files:
        raise DataError(f"{where} holds no .jsonl or .parquet prompt file")
    return files


HUB_PREFIX = "hf:"


def load_prompts(
    path: str | Path, round_id: str | None = None, columns: dict[str, str] | None = None, split: str = "train"
) -> list[Prompt]:
    """Every prompt `path` names, in file then row order: JSONL/Parquet files (a file, a
    directory or a glob), a Hugging Face dataset saved with `save_to_disk`, or `hf:<hub id>`.
    `columns` renames the dataset's fields to this schema's (`{"instruction": "question"}`).
    Ids must be unique across the files (a row's default id is `<file stem>-<line>`)."""
    prompts: list[Prompt] = []
    seen: dict[str, tuple[object, object]] = {}  # prompt id -> (source, where) of its first row
    for source, where, row in _rows(path, round_id, split):
        row = _renamed(row, columns, f"{source}:{where}") if columns else row
        prompt = row_to_prompt(row, default_id=f"{Path(str(source)).stem}-{where}", where=f"{source}:{where}")
        if prompt.id in seen:
            first_source, first = seen[prompt.id]
            at = f"line {first}" if first_source == source else f"{first_source}:{first}"
            raise DataError(f"{source}:{where}: duplicate id {prompt.id!r} (first at {at})")
        seen[prompt.id] = (source, where)
        prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: holds no prompts")
    return prompts


def load_data(data, round_id: str | None = None) -> list[Prompt]:
    """The prompts of a `data` config block."""
    return load_prompts(data.path, round_id, data.columns, data.split)


def _rows(path: str | Path, round_id: str | None, split: str):
    """(source, row number, row) for every row of every source `path` names."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        yield from _hf_rows(_hub_dataset(text.removeprefix(HUB_PREFIX), split), text, split)
        return
    if is_saved_dataset(Path(text)):
        yield from _saved_rows(Path(text), split)
        return
    for file in prompt_files(path, round_id):
        for where, row in _read_parquet(file) if file.suffix == ".parquet" else _read_jsonl(file):
            yield file, where, row


def _renamed(row, columns: dict[str, str], where: str):
    """The row with the dataset's column names mapped to this schema's (data.columns)."""
    if not isinstance(row, dict):
        return row
    missing = [c for c in columns.values() if c not in row]
    if missing:
        raise DataError(f"{where}: data.columns names {missing}, which the row does not have; it has: {sorted(row)}")
    mapped = {ours: row[theirs] for ours, theirs in columns.items()}
    return {**{k: v for k, v in row.items() if k not in columns.values()}, **mapped}


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.path names a Hugging Face dataset, but the `datasets` package is not installed; "
            "pip install 'alignloop[hf]'"
        ) from None
    return datasets


def _saved_dataset(path: Path, split: str):
    loaded = _datasets().load_from_disk(str(path))
    if hasattr(loaded, "keys"):  # a DatasetDict: pick the split
        if split not in loaded:
            raise DataError(
                f"{path}: no split {split!r} in the saved dataset (it has {sorted(loaded)}); set data.split"
            )
        return loaded[split]
    return loaded


def _saved_rows(path: Path, split: str):
    """The rows of a saved dataset; one that is damaged or partly written (missing or truncated
    Arrow files, a broken state.json) is a DataError naming the directory, found while loading
    or while reading its rows (Arrow files are read lazily)."""
    try:
        yield from _hf_rows(_saved_dataset(path, split), str(path), split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets, pyarrow and json each raise their own
        first = (str(e).splitlines() or [""])[0][:300]
        raise DataError(
            f"{path}: a damaged or partly written `save_to_disk` directory ({type(e).__name__}: {first}); "
            "save the dataset again, or point data.path at JSONL/Parquet files"
        ) from None


def _hub_dataset(name: str, split: str):
    datasets = _datasets()
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown id or split: all the user's to fix
        raise DataError(
            f"data.path hf:{name}: could not load split {split!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); without network, save it once with `save_to_disk` and set data.path "
            "to that directory"
        ) from None


def _hf_rows(dataset, source: str, split: str):
    for index, row in enumerate(dataset, start=1):
        yield f"{source}[{split}]", index, row


def _read_jsonl(path: Path):
    for lineno, line in enumerate(utf8_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:  # the decoder recurses once per level: ~1000 '[' end it
            raise DataError(f"{path}:{lineno}: nested too deeply; {NESTING_HELP}") from None
        yield lineno, row


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}); rewrite it, or use JSONL") from None
    yield from enumerate(rows, start=1)


def read_records(path: Path, cls: type[R], error: type[Exception] = DataError) -> list[R]:
    """The records of a JSONL file a run wrote (prompts, samples, judgments); a missing file or
    a line that is not such a record raises `error` naming the file and the line."""
    if not path.is_file():
        raise error(f"{path}: missing; the run directory is incomplete (was it copied in part?)")
    records = []
    for n, line in enumerate(read_utf8(path, error).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(cls.model_validate_json(line))
        except ValidationError as e:
            first = e.errors()[0]  # its input may be a whole response: not shown
            at = ".".join(str(part) for part in first["loc"])
            raise error(f"{path}:{n}: not a {cls.__name__} record ({at + ': ' if at else ''}{first['msg']})") from None
    return records


def utf8_lines(path: Path) -> list[str]:
    """The file's lines; a file that is not UTF-8 is a DataError naming the line and byte."""
    return read_utf8(path, DataError).splitlines()


# Rows are saved as JSON (prompts.jsonl, samples) by a serializer that stops at 255 levels, so
# deeper rows are refused when read, not when the first write fails mid-run.
MAX_NESTING = 100
NESTING_HELP = f"a row may nest lists and objects at most {MAX_NESTING} levels deep"


def nesting(value: Any) -> int:
    """How many levels of lists and objects `value` nests (a scalar: 0), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if depth <= MAX_NESTING:  # deeper than that is refused whatever lies below
                stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def row_to_prompt(row: Any, default_id: str, where: str) -> Prompt:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if nesting(row) > MAX_NESTING:
        raise DataError(f"{where}: nested more than {MAX_NESTING} levels deep; {NESTING_HELP}")
    row = dict(row)
    pid = str(row.pop("id", None) or default_id)
    try:
        if "messages" in row:
            messages = [Message.model_validate(m) for m in row.pop("messages")]
            if not messages or messages[-1].role != "user":
                raise DataError(f"{where}: `messages` must end with a user turn")
        elif "instruction" in row:
            messages = _instruction_messages(row, where)
        else:
            raise DataError(f"{where}: needs `messages` (a chat) or `instruction` (+ optional `input`)")
    except (ValidationError, TypeError) as e:
        raise DataError(f"{where}: bad `messages`: {e}") from None
    return Prompt(id=pid, messages=messages, meta=row)


def _instruction_messages(row: dict, where: str) -> list[Message]:
    instruction, extra, system = row.pop("instruction"), row.pop("input", None), row.pop("system", None)
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: `instruction` must be a non-empty string")
    text = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [Message(role="system", content=system)] if system else []
    return messages + [Message(role="user", content=text)]


def check_batch_fits(n: int, per_iteration: int) -> None:
    if per_iteration > n:
        raise DataError(
            f"data.prompts_per_iteration ({per_iteration}) is larger than the dataset ({n} prompts); "
            f"set it to at most {n}"
        )


class StreamPosition(TypedDict):
    """Where a PromptStream stands (saved in state.json)."""

    epoch: int
    position: int
    order: list[int] | None


class PromptStream:
    """Draws `per_iteration` prompts at a time. No prompt is reused until every prompt has been
    drawn once; then the order is reshuffled. A batch that crosses that boundary never holds a
    prompt twice. The position is plain data, saved in state.json, so a resumed run draws
    exactly what an uninterrupted one would have."""

    def __init__(
        self, n: int, per_iteration: int, seed: int, shuffle: bool = True, state: StreamPosition | None = None
    ):
        check_batch_fits(n, per_iteration)
        self.n, self.per_iteration, self.seed, self.shuffle = n, per_iteration, seed, shuffle
        state = state or StreamPosition(epoch=0, position=0, order=None)
        self.epoch, self.position = state["epoch"], state["position"]
        order = state.get("order")
        self.order = order if order is not None else self._new_order(self.epoch, [])

    def _new_order(self, epoch: int, in_batch: list[int]) -> list[int]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        # Prompts already in the batch being filled go last, so the batch holds no duplicates.
        taken = set(in_batch)
        return [int(i) for i in order if i not in taken] + [int(i) for i in order if i in taken]

    def next_batch(self) -> list[int]:
        batch: list[int] = []
        while len(batch) < self.per_iteration:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self._new_order(self.epoch, batch)
            take = min(self.per_iteration - len(batch), self.n - self.position)
            batch += self.order[self.position : self.position + take]
            self.position += take
        return batch

    def state(self) -> StreamPosition:
        return StreamPosition(epoch=self.epoch, position=self.position, order=self.order)


def content_hash(prompt: Prompt) -> str:
    """sha256 of what the policy is asked (the chat), so the same prompt under another id or
    in another file is recognised as the same."""
    chat = json.dumps([m.model_dump() for m in prompt.messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(chat.encode("utf-8")).hexdigest()
