"""The config reference (markdown) from the pydantic models' field descriptions.

    python scripts/config_reference.py            # print it
    python scripts/config_reference.py --write    # write it into docs/configuration-reference.md
    python scripts/config_reference.py --check    # exit 1 if that page's copy is stale

docs/configuration-reference.md holds the output between the `config-reference` markers;
tests/integration/test_docs.py runs --check, so a schema change without --write fails there.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from alignloop.loop.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration-reference.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def type_name(tp) -> str:
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    # Name a config class by the package users import it from, not the file it is defined in.
    text = text.replace("alignloop.loop.config.schema.", "alignloop.loop.config.")
    if isinstance(tp, type):
        text = tp.__name__
    return text.replace("Annotated[", "").split(", FieldInfo")[0].split(", Discriminator")[0]


def default_of(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(section)" if isinstance(field.default_factory, type) else repr(field.default_factory())
    return repr(field.default)


def sections(model: type[BaseModel], prefix: str = ""):
    rows, nested = [], []
    for name, field in model.model_fields.items():
        tp = field.annotation
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
        if field.discriminator:  # a union keyed on `type`: documented on its own docs page
            members = typing.get_args(inner) or (inner,)
            tags = ", ".join(m.model_fields["type"].default for m in members)
            rows.append(
                (name, f"one of: {tags}", default_of(field) if field.is_required() else "sft", field.description or "")
            )
            continue
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            nested.append((f"{prefix}{name}", inner))
            rows.append((name, inner.__name__, "(section)", field.description or ""))
            continue
        rows.append((name, type_name(tp), default_of(field), field.description or ""))
    yield prefix.rstrip(".") or "top level", rows
    for name, inner in nested:
        yield from sections(inner, f"{name}.")


def escape_tags(text: str) -> str:
    """`<name>` outside backticks would be read as an HTML tag and vanish from the page."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def reference() -> str:
    out = []
    for title, rows in sections(RunConfig):
        out.append(f"**{title}**\n")
        out.append("| field | type | default | meaning |\n|---|---|---|---|")
        for name, tp, default, doc in rows:
            # a bare | would end the table cell, even inside backticks
            tp, default, doc = (str(x).replace("|", "\\|") for x in (tp, default, doc))
            doc = escape_tags(doc)
            out.append(f"| `{name}` | `{tp}` | `{default}` | {doc} |".replace("`(section)`", "section"))
        out.append("")
    out.append(
        "`judge` and `learner.objective` are chosen by `type`; their fields are listed in "
        "[Judges](judges.md) and [Objectives](objectives.md)."
    )
    return "\n".join(out)


def replace_block(page: str, text: str) -> str:
    """The page with the text between the markers replaced by `text`."""
    head, rest = page.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{text.strip()}\n{END}{rest.split(END, 1)[1]}"


def main() -> int:
    text = reference()
    if "--check" not in sys.argv and "--write" not in sys.argv:
        print(text)
        return 0
    page = PAGE.read_text(encoding="utf-8")
    if BEGIN not in page or END not in page:
        print(f"{PAGE.relative_to(ROOT)} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    if "--write" in sys.argv:
        PAGE.write_text(replace_block(page, text), encoding="utf-8")
        return 0
    current = page.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if current != text.strip():
        print(
            f"{PAGE.relative_to(ROOT)}'s config reference is stale: run `python scripts/config_reference.py --write`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
