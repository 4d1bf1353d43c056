"""Multiple-choice tasks from what teams have: a JSONL file of mixopt's own schema, or any JSONL,
JSON, Parquet file, `datasets.save_to_disk` folder or Hub dataset, read through a field mapping or
a preset for a common benchmark's schema; with seeded few-shot exemplars.

Every task becomes items {"context": text, or one text per choice, "choices": [...], "answer": i}:
the proxy scores each choice's text after its context. The presets use the cloze formulation (the
answer's text is scored, not a letter), the one that ranks small models (OLMES, DataDecide).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from mixopt.config.evals import ChoiceEvaluation
from mixopt.errors import MixoptError, shown

PLAIN = {"question": "question", "choices": "choices", "answer": "answer"}  # mixopt's own JSONL schema
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FEWSHOT_SEPARATOR = "\n\n"


def read_choice_task(e: ChoiceEvaluation, resolve, seed: int = 0) -> list[dict]:
    """The evaluation's items, few-shot contexts included; `resolve` turns a suite path into a Path."""
    rows, where = _load_rows(e, resolve, e.split)
    items = [_item(e, row, f"{where}:{n}") for n, row in rows]
    if not items:
        raise MixoptError(f"{where}: the choice task has no items", "add rows (or check `split`)")
    if e.max_items:
        items = items[:e.max_items]
    if e.k:
        pool, same = items, True
        if e.fewshot_split:
            frows, fwhere = _load_rows(e, resolve, e.fewshot_split)
            pool, same = [_item(e, row, f"{fwhere}:{n}") for n, row in frows], False
        if len(pool) < e.k + same:
            raise MixoptError(f"evaluation '{e.name}': k={e.k} exemplars asked, {len(pool) - same} available",
                              "lower `k` or give a larger `fewshot_split`")
        items = [_with_exemplars(it, i, pool, same, e.k, (seed, zlib.crc32(e.name.encode()))) for i, it in
                 enumerate(items)]
    return items


def _with_exemplars(item: dict, i: int, pool: list[dict], same: bool, k: int, seed: tuple) -> dict:
    """`item` with k exemplars (answered) before it, drawn without replacement, never the item itself."""
    rng = np.random.default_rng((*seed, i))
    candidates = [j for j in range(len(pool)) if not (same and j == i)]
    shots = [pool[candidates[j]] for j in rng.choice(len(candidates), size=k, replace=False)]
    prefix = "".join(_answered(s) + FEWSHOT_SEPARATOR for s in shots)
    ctx = item["context"]
    return {**item, "context": [prefix + c for c in ctx] if isinstance(ctx, list) else prefix + ctx}


def _answered(item: dict) -> str:
    a, ctx = item["answer"], item["context"]
    return (ctx[a] if isinstance(ctx, list) else ctx) + item["choices"][a]


def _load_rows(e: ChoiceEvaluation, resolve, split: str | None) -> tuple[list[tuple[int, dict]], str]:
    """(row number from 1, row) of the task's data, and a name for it in errors."""
    if e.dataset:
        return _hub_rows(e, split), f"{e.dataset}[{split or 'test'}]"
    path = resolve(e.path)
    if path.is_dir():
        return _disk_rows(path, split), f"{path}[{split}]" if split else str(path)
    if not path.is_file():
        raise MixoptError(f"choice task file not found: {path}", "fix the evaluation's `path`")
    if split is not None and split != e.split:
        raise MixoptError(f"evaluation '{e.name}': fewshot_split needs a dataset with splits, {path} is one file",
                          "drop fewshot_split (exemplars are then drawn from the other items)")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), 1)), str(path)
    if name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError as err:
            raise MixoptError(f"{path}: not JSON ({err.msg}, line {err.lineno})", "write a JSON list of rows, or "
                              "JSONL") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}, as some releases ship
        if not isinstance(data, list):
            raise MixoptError(f"{path}: not a JSON list of rows", "write a JSON list of objects, or JSONL")
        return list(enumerate(data, 1)), str(path)
    return _jsonl_rows(path), str(path)


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise MixoptError(f"{path}:{n}: not a JSON object", "write one JSON object per line") from None
            rows.append((n, row))
    return rows


def _disk_rows(path: Path, split: str | None) -> list[tuple[int, dict]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError:
        raise MixoptError(f"{path}: a folder, but not one written by datasets' save_to_disk",
                          "point `path` at a save_to_disk folder, or at a JSONL / Parquet file") from None
    if isinstance(ds, DatasetDict):
        if split is None or split not in ds:
            raise MixoptError(f"{path}: {'no split ' + repr(split) if split else 'a dataset with splits'} "
                              f"(it has {', '.join(ds)})", "set the evaluation's `split`")
        ds = ds[split]
    elif split is not None and not isinstance(ds, Dataset):
        raise MixoptError(f"{path}: no splits to choose from", "drop `split`")
    return list(enumerate(ds.to_list(), 1))


def _hub_rows(e: ChoiceEvaluation, split: str | None) -> list[tuple[int, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(e.dataset, e.subset, split=split or "test")
    except (ConnectionError, FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise MixoptError(f"evaluation '{e.name}': cannot load {e.dataset!r} ({str(err).splitlines()[0][:200]})",
                          "check the name, subset and split, and the network; or save it with save_to_disk and "
                          "give its `path`") from None
    return list(enumerate(ds.to_list(), 1))


def _get(row: dict, field: str, where: str):
    v = row
    for part in field.split("."):
        if not isinstance(v, dict) or part not in v:
            raise MixoptError(f"{where}: no field '{field}'", "fix the evaluation's `fields` (or `preset`)")
        v = v[part]
    return v


def _item(e: ChoiceEvaluation, row, where: str) -> dict:
    if not isinstance(row, dict):
        raise MixoptError(f"{where}: not a JSON object", "write one JSON object per line")
    item = PRESETS[e.preset](row, where) if e.preset else _mapped(row, e.fields or {}, where)
    ch, a = item["choices"], item["answer"]
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
        raise MixoptError(f"{where}: 'choices' must be a list of at least 2 non-empty strings", "fix the row's choices")
    if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(ch):
        raise MixoptError(f"{where}: answer {shown(a)} is not an index into its {len(ch)} choices",
                          f"give an integer from 0 to {len(ch) - 1}")
    return item


def _mapped(row: dict, fields: dict, where: str) -> dict:
    """mixopt's schema, or any other through `fields`: question text, choices list, answer as an index,
    a digit string, or a label (from `labels`, else A, B, C ...)."""
    f = PLAIN | fields
    q = _get(row, f["question"], where)
    if not isinstance(q, str) or not q.strip():
        raise MixoptError(f"{where}: no '{f['question']}' text", f"give each row a non-empty '{f['question']}'")
    ch = _get(row, f["choices"], where)
    try:
        a = _get(row, f["answer"], where)
    except MixoptError:
        raise MixoptError(f"{where}: no '{f['answer']}'", "give the index of the correct choice (0-based)") from None
    labels = _get(row, fields["labels"], where) if "labels" in fields else None
    return {"context": q + "\n", "choices": ch, "answer": _answer_index(a, labels, ch, where)}


def _answer_index(a, labels, choices, where: str):
    """An answer as given (index, "2", "B", a label of `labels`) -> the choice's index; else left as is."""
    if isinstance(a, str):
        s = a.strip()
        if labels is not None and s in labels:
            return list(labels).index(s)
        if s.isdigit():
            return int(s)
        if len(s) == 1 and s.upper() in LETTERS[:len(choices) if isinstance(choices, list) else 0]:
            return LETTERS.index(s.upper())
        raise MixoptError(f"{where}: answer {shown(a)} names none of the choices",
                          "give an index, a letter, or map `labels` to the choices' labels")
    return a


def _arc(row: dict, where: str) -> dict:
    ch = _get(row, "choices", where)
    text, labels = _get(ch, "text", where), _get(ch, "label", where)
    return {"context": f"Question: {_get(row, 'question', where)}\nAnswer:", "choices": [" " + t for t in text],
            "answer": _answer_index(str(_get(row, "answerKey", where)), labels, text, where)}


def _hellaswag(row: dict, where: str) -> dict:
    ctx, topic = _get(row, "ctx", where), row.get("activity_label")
    label = _get(row, "label", where)
    return {"context": f"{topic}: {ctx}" if topic else ctx, "choices": [" " + t for t in _get(row, "endings", where)],
            "answer": _answer_index(label, None, [], where) if isinstance(label, str) else label}


def _piqa(row: dict, where: str) -> dict:
    return {"context": f"Question: {_get(row, 'goal', where)}\nAnswer:",
            "choices": [" " + _get(row, "sol1", where), " " + _get(row, "sol2", where)],
            "answer": _get(row, "label", where)}


def _winogrande(row: dict, where: str) -> dict:
    """Each option fills the blank; the proxy scores the rest of the sentence after it (partial scoring)."""
    s = _get(row, "sentence", where)
    if s.count("_") != 1:
        raise MixoptError(f"{where}: a Winogrande sentence has one '_' blank", "fix the row's sentence")
    head, tail = s.split("_")
    opts = [_get(row, "option1", where), _get(row, "option2", where)]
    a = _get(row, "answer", where)
    return {"context": [head + o for o in opts], "choices": [" " + tail.strip()] * 2,
            "answer": int(a) - 1 if isinstance(a, str) and a.strip().isdigit() else a}


def _mmlu(row: dict, where: str) -> dict:
    choices, a = _get(row, "choices", where), _get(row, "answer", where)
    return {"context": f"Question: {_get(row, 'question', where)}\nAnswer:", "choices": [" " + c for c in choices],
            "answer": _answer_index(a, None, choices, where)}


def _boolq(row: dict, where: str) -> dict:
    """google/boolq (answer: bool) and super_glue's (label: 0 = no, 1 = yes)."""
    q = _get(row, "question", where).strip()
    a = row["answer"] if "answer" in row else _get(row, "label", where)
    return {"context": f"{_get(row, 'passage', where)}\nQuestion: {q}{'' if q.endswith('?') else '?'}\nAnswer:",
            "choices": [" no", " yes"], "answer": int(a) if isinstance(a, (bool, int)) else a}


PRESETS = {"arc": _arc, "hellaswag": _hellaswag, "piqa": _piqa, "winogrande": _winogrande, "mmlu": _mmlu,
           "boolq": _boolq}
