"""Reading YAML that a user (or an attacker) wrote: a duplicate key is refused rather than the
last one silently winning, and aliases may not expand the document past a bound.

PyYAML builds an alias as a second reference to the same object, so the load itself stays
small; what explodes is everything after it that walks the tree (validation, printing,
saving): a 500-byte "billion laughs" document in a free-form field such as `extra_body` cost
34 s and 375 MB in validation. The loader counts the nodes the document would have with
every alias written out, and refuses it past MAX_NODES before anything walks it.
"""

from __future__ import annotations

from typing import Any

import yaml

# A config is a few hundred nodes; a judge's `extra_body` or a plugin's `options` might hold a
# JSON schema of a few thousand. This leaves plenty of room and validates in well under a second.
MAX_NODES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


class YAMLRefused(Exception):
    """Valid YAML that alignloop will not load; `line` is 1-based (0: the whole document)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents whose aliases expand past MAX_NODES."""

    def construct_document(self, node: yaml.Node) -> Any:
        size = expanded_size(node, MAX_NODES)
        if size > MAX_NODES:
            raise YAMLRefused(
                0,
                f"it holds more than {MAX_NODES:,} values once its aliases (*name) are expanded, or an alias "
                "holds itself; use fewer nested aliases (or fewer values)",
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # Before merge keys (<<: *base) are flattened: a key given beside a merge overrides the
        # merged one on purpose, but the same key written twice in one mapping is a mistake.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise YAMLRefused(line, f"duplicate key {_short(key)} (first at line {seen[key]}); keep one")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it itself
        return super().construct_mapping(node, deep=deep)


def _short(key: Any) -> str:
    from alignloop.records.secrets import quote

    return quote(key, limit=60)


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias written out, counted without writing them out
    (each node's size once, shared by its aliases); stops counting past `limit`. A node that
    contains itself (&a [*a]) has no finite size: limit + 1."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]  # iterative: deep nesting must not recurse
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, name: str = "<text>") -> Any:
    """The document in `text`; YAMLRefused or yaml.YAMLError (its marks say `name`) when it is refused."""
    loader = BoundedLoader(text)
    loader.name = name  # the marks in PyYAML's own errors name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
