"""Reading an experiment spec file: a regular file of sane size, YAML with the safe loader (tags that build
Python objects refused) whose aliases may not expand past a budget, the line of every key, and `short`, the
form in which an error message quotes a value."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from darktune.errors import DarktuneError
from darktune.files import read_regular

MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; anything near this is not one
# Nodes a spec may reach through YAML aliases, counted expanded (an alias of a 10-key mapping counts 21: the
# mapping, its keys and values). Sharing a block of options between stages costs tens per alias; a 'billion
# laughs' of 9 levels of 9 aliases costs 9**9. 10,000 leaves the first two orders of magnitude of room.
MAX_ALIAS_NODES = 10_000

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 40, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 5


def short(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters. reprlib stops at a depth and
    a count per container, so a value reaching a million nodes through aliases is never expanded to be cut."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """Nodes in a composed YAML node counted as if every alias were written out (memoised by complete node, so
    the count costs one visit per distinct node; a node still being composed, reached from inside, counts one)."""
    if node.end_mark is None:  # still being composed: an alias inside its own anchor (`&a [*a]`), a cycle
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _spec_loader():
    """yaml.SafeLoader (same tags, same values) that counts the nodes aliases expand to and stops composing at
    the alias that passes MAX_ALIAS_NODES, naming its line."""
    class SpecLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = self.anchors.get(event.anchor)
                if node is not None:
                    self.alias_nodes = getattr(self, "alias_nodes", 0) + _expanded_size(node, self.sizes)
                    if self.alias_nodes > MAX_ALIAS_NODES:
                        raise yaml.composer.ComposerError(
                            None, None, f"YAML aliases expand past {MAX_ALIAS_NODES:,} nodes (an alias bomb?)",
                            event.start_mark)
            return super().compose_node(parent, index)

        def compose_document(self):
            self.sizes: dict[int, int] = {}  # expanded size of each complete node (id -> nodes)
            return super().compose_document()

    return SpecLoader


def _key_lines(node: Any, prefix: tuple = (), seen: set[int] | None = None) -> dict[tuple, int]:
    """Line (1-based) of every mapping key in a composed YAML node tree, keyed by the key path. A node reached
    again through an alias is not walked again (nested aliases would otherwise expand exponentially)."""
    seen = set() if seen is None else seen
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode) and id(node) not in seen:
        seen.add(id(node))
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key, seen))
    return lines


def read_spec_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """(the YAML document as plain values, line of every mapping key by key path), or a one-line error naming
    the file and line."""
    path = Path(path)
    try:  # a regular file of sane size only: a FIFO or /dev/zero named *.yaml is refused, not read forever
        text = read_regular(path, "experiment spec", MAX_SPEC_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DarktuneError(f"cannot read experiment spec: {exc}", path=str(path)) from None
    try:
        loader = _spec_loader()(text)
        try:  # yaml.safe_load, composing once: the node tree gives the key lines too
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
            lines = _key_lines(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "python/" in str(exc) or "could not determine a constructor" in str(exc):
            reason = f"{reason} (YAML tags that build Python objects are refused)"
        raise DarktuneError(f"not a valid experiment spec: {reason}", path=str(path),
                            line=mark.line + 1 if mark else None) from None
    return data, lines
