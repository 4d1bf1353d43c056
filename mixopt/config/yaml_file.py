"""A YAML file as mixopt reads it (config, eval suite, mixture files, its own records): one MixoptError
naming the file for bad syntax, bad encoding, a key given twice or a file too large to be mixopt's
(bytes, values, aliases), and the line of each key for the messages."""

from __future__ import annotations

from pathlib import Path

import yaml

from mixopt.errors import MixoptError


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML itself keeps the last),
    and a file of more than YAML_NODES values is refused while it is composed (a million domains took
    minutes to parse before anything could say no)."""

    composed = 0

    def compose_node(self, parent, index):
        self.composed += 1
        if self.composed > YAML_NODES:
            raise MixoptError(f"it holds more than {YAML_NODES:,} YAML values; a mixopt file is far smaller (at "
                              f"most {MAX_DOMAINS:,} domains)", "split the experiment, or group sources into "
                              "fewer domains")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise MixoptError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice",
                                  "keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    """A YAML file as data; bad syntax, bad encoding and repeated keys are one MixoptError naming the file."""
    return read_yaml_lines(path)[0]


def read_yaml_lines(path: Path) -> tuple[object, dict[tuple, int]]:
    """A YAML file as data, and the line of each key (by its path of keys and list indices)."""
    try:
        with open(path, "rb") as f:
            data = f.read(YAML_BYTES + 1)
        if len(data) > YAML_BYTES:  # refused before parsing: pure-Python YAML composes ~50k values a second
            raise MixoptError(f"{path}: larger than {YAML_BYTES >> 20} MB; a mixopt file is far smaller (at most "
                              f"{MAX_DOMAINS:,} domains)", "split the experiment, or group sources into fewer domains")
        text = data.decode("utf-8-sig")  # a BOM is fine; other non-UTF-8 bytes are not
    except UnicodeDecodeError as e:
        raise MixoptError(f"{path}: not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    except OSError as e:
        raise MixoptError(f"{path}: cannot read it ({e.strerror})", "check the path and its permissions") from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node)  # before anything walks the aliases: construction and _key_lines do
        data = loader.construct_document(node) if node is not None else None
    except MixoptError as e:
        raise MixoptError(f"{path}: {e.problem}", e.fix) from None
    except RecursionError:  # the composer recurses per level: 100k nested `[` end here, in milliseconds
        raise MixoptError(f"{path}: nested too deeply to read (hundreds of levels of lists or mappings)",
                          "a mixopt file is a few levels deep: fix the file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MixoptError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None
    finally:
        loader.dispose()
    return data, _key_lines(node) if node is not None else {}


YAML_NODES = 200_000  # YAML nodes a file may hold (aliases expanded); MAX_DOMAINS domains need ~60,000
MAX_DOMAINS = 10_000  # domains an experiment may have: checked before any per-domain work
YAML_BYTES = 8 << 20  # a YAML file mixopt reads: MAX_DOMAINS domains take ~1 MB


def _check_expanded_size(root) -> None:
    """Refuse a YAML whose aliases expand past YAML_NODES nodes ("billion laughs": nine aliases of nine
    lists of ... take gigabytes and minutes to walk) or refer to the node that holds them. Counted
    over the distinct nodes, each once (memoized), so the check itself takes milliseconds."""
    size: dict[int, int] = {}
    busy: set[int] = set()

    def count(node) -> int:
        if id(node) in size:
            return size[id(node)]
        if id(node) in busy:
            raise MixoptError(f"line {node.start_mark.line + 1}: an alias refers to the node that contains it",
                              "write the value out instead of the alias")
        busy.add(id(node))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += count(child)
            if total > YAML_NODES:
                raise MixoptError(f"its aliases expand to more than {YAML_NODES:,} YAML nodes (an alias bomb?)",
                                  "write the values out; a mixopt file needs few aliases, if any")
        busy.discard(id(node))
        size[id(node)] = total
        return total

    count(root)


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    out = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = _key_lines(v, prefix + (str(getattr(k, "value", k)),))
            sub[prefix + (str(getattr(k, "value", k)),)] = k.start_mark.line + 1
            out.update(sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_key_lines(v, prefix + (i,)))
    return out
