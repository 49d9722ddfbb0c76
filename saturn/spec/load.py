"""YAML <-> Workload, with errors a user can act on.

The YAML a user writes has `defaults`, `jobs` and a `sweep`; we expand it (defaults merged into
each job, sweep multiplied out into uniquely named jobs) before validating, and keep a map from
each YAML path to its line so that every error says where to look: field path, bad value, what is
allowed, and the line.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from saturn.errors import SpecError
from saturn.spec import limits as L
from saturn.spec.schema import Cluster, Job, Workload, known_max_gpus, name_or_factory

TOP_KEYS = ("name", "cluster", "defaults", "jobs", "sweep", "objective")


_FAST = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 10,000-job files

# (field path inside the job, message, offending value) for each problem a layer above finds
JobCheck = Callable[[Job], list[tuple[tuple, str, Any]]]


def _yaml(text: str, how: str) -> Any:
    """yaml.compose / yaml.safe_load by libyaml when it parses the text; text it refuses is
    parsed again by PyYAML's pure-Python loader, so that errors read the same either way."""
    try:
        return getattr(yaml, how if how == "compose" else "load")(text, Loader=_FAST)
    except yaml.YAMLError:
        return yaml.compose(text) if how == "compose" else yaml.safe_load(text)


def load_workload(source: Union[str, os.PathLike], *, job_check: Optional[JobCheck] = None) -> Workload:
    """A file path, or YAML text (anything containing a newline or a colon-space). `job_check`:
    the checks of a layer above the spec (the technique registry's, saturn.techniques.checks),
    whose problems are reported like the spec's own, at their YAML line."""
    text, where = _read(source)
    try:
        L.check_size(len(text.encode("utf-8", "replace")), where)
        root = _yaml(text, "compose")
        if root is not None:
            L.check_node_count(root, where)  # before anything walks or copies the aliases
            _check_duplicate_keys(root, where)
        raw = _yaml(text, "load")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}:{line} YAML syntax error: {problem}") from None
    except (ValueError, RecursionError) as exc:
        raise SpecError(str(exc) if isinstance(exc, ValueError) else f"{where}: YAML nested too deeply") from None
    lines = _line_map(root) if root is not None else {}
    return build_workload(raw, where=where, lines=lines, job_check=job_check)


def build_workload(raw: Any, *, where: str = "workload", lines: Optional[dict] = None,
                   job_check: Optional[JobCheck] = None) -> Workload:
    """Expand and validate a raw mapping (parsed YAML) into a Workload."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: the top level must be a mapping with keys {list(TOP_KEYS)}")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise SpecError(_join(where, [_unknown_key_msg((k,), k, TOP_KEYS, lines) for k in unknown]))
    if not isinstance(raw.get("name", "x"), (str, int, float)):
        raise SpecError(f"{where}: name: must be a text name like my-sweep{_at(('name',), lines)}")
    jobs, origins = _expand_jobs(raw, where, lines)
    problems: list[str] = []
    cluster = _validate(Cluster, raw.get("cluster", "local"), ("cluster",), lines, problems)
    built = []
    for job, origin in zip(jobs, origins):
        j = _validate(Job, job, origin, lines, problems, label=job.get("name"))
        if j is not None and job_check is not None:
            head = f"{_path(origin)} (job {j.name!r})"
            problems += [_fmt({"loc": loc, "msg": msg, "type": "value_error", "input": got}, origin, lines, Job, head)
                         for loc, msg, got in job_check(j)]
        built.append(j)
    cap = known_max_gpus(cluster) if cluster is not None else None
    for j, origin in zip(built, origins):  # here, not in Workload's check: the job's own YAML line
        if j is not None and cap is not None and j.gpus and max(j.gpus) > cap:
            line = _at(origin + ("gpus",), lines) or _at(("defaults", "gpus"), lines) or _at(origin, lines)
            problems.append(f"{_path(origin)} (job {j.name!r}).gpus: {j.gpus} needs more GPUs than the cluster's "
                            f"largest node has ({cap}); lower `gpus` or add a larger node{line}")
    if problems:
        raise SpecError(_join(where, _dedupe(problems)))
    try:
        extra = {"objective": raw["objective"]} if "objective" in raw else {}  # the planner's objective
        return Workload(name=str(raw.get("name", _slug(Path(where).stem).strip("._+-=") or "workload")),
                        cluster=cluster, jobs=built, **extra)
    except ValidationError as exc:
        raise SpecError(_join(where, [_fmt(e, (), lines, Workload) for e in exc.errors()])) from None


def check_local_paths(workload: Workload) -> None:
    """Local files the jobs need (model weights, text data) exist here -- called by `profile` and
    `run`, where the jobs execute, before any trial or launch (exit 2 naming each missing path)."""
    missing = L.missing_local_paths(workload.jobs)
    if missing:
        raise SpecError(_join(getattr(workload, "path", None) or "workload",
                              [m + " on this machine; fix the path or copy the file here" for m in missing]))


def dump_workload(workload: Workload) -> str:
    """Expanded YAML (jobs listed one by one); `load_workload` of it gives the same Workload."""
    data = workload.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data.setdefault("name", workload.name)
    data.setdefault("cluster", workload.cluster.model_dump(mode="json", exclude_defaults=True))
    return yaml.safe_dump(data, sort_keys=False)


# -- expansion -------------------------------------------------------------------------------


def _expand_jobs(raw: dict, where: str, lines: dict) -> tuple[list[dict], list[tuple]]:
    """Jobs with defaults merged and sweeps multiplied; origins are YAML paths for error lines."""
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SpecError(f"{where}: `defaults` must be a mapping of job fields{_at(('defaults',), lines)}")
    entries = raw.get("jobs")
    if entries is None:
        entries = [{}] if raw.get("sweep") else []
    if not isinstance(entries, list):
        raise SpecError(f"{where}: `jobs` must be a list of job mappings{_at(('jobs',), lines)}")
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
        raise SpecError(f"{where}: `sweep` must map field paths to non-empty lists, e.g. "
                        f"`optimizer.lr: [1e-4, 3e-4]`{_at(('sweep',), lines)}")
    for key in sweep:
        if not isinstance(key, str) or not all(part.strip() for part in key.split(".")):
            raise SpecError(f"{where}: sweep key {key!r} has an empty part; write a dotted field path such as "
                            f"`optimizer.lr`{_at(('sweep', key), lines)}")
    base_name = str(raw.get("name", "job"))
    n_combos = 1
    for v in sweep.values():
        n_combos *= len(v)
    try:
        L.check_job_count(max(1, len(entries)) * n_combos if sweep else len(entries), where)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    jobs, origins = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: jobs[{i}] must be a mapping, got {entry!r}{_at(('jobs', i), lines)}")
        merged = _merge(_normalize(defaults), _normalize(entry))
        merged.setdefault("name", base_name if len(entries) == 1 else f"{base_name}-{i}")
        for combo in itertools.product(*sweep.values()) if sweep else [()]:
            job = copy.deepcopy(merged)
            parts = []
            for key, value in zip(sweep, combo):
                try:
                    _set_path(job, key.split("."), value)
                except ValueError as exc:
                    raise SpecError(f"{where}: {exc}{_at(('sweep', key), lines)}") from None
                parts.append(f"{key.split('.')[-1]}={_slug(value)}")
            if parts:
                job["name"] = "-".join([job["name"], *parts])
            jobs.append(job)
            origins.append(("jobs", i) if "jobs" in raw else ("defaults",))
    return jobs, origins


def _normalize(d: dict) -> dict:
    d = copy.deepcopy(d)
    for key in ("model", "data"):
        if key in d:
            d[key] = name_or_factory(d[key])
    return d


REPLACING_KEYS = ("model", "data")  # a job's model/data naming its source replaces the default's
SOURCE_KEYS = ("name", "factory")


def _merge(base: dict, over: dict, top: bool = True) -> dict:
    """`over` deep-merged into `base`, except that a job's `model` or `data` that names its source
    (`name` or `factory`) replaces the default one whole: a job with `model: {factory: ...}` under
    `defaults: {model: {name: gpt2-small, overrides: ...}}` is that factory's model, not a mix of
    both. A job's `model: {overrides: ...}` without a source still refines the default model."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        replaces = top and k in REPLACING_KEYS and isinstance(v, dict) and any(s in v for s in SOURCE_KEYS)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not replaces:
            out[k] = _merge(out[k], v, top=False)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for i, key in enumerate(path[:-1]):
        d = d.setdefault(key, {})
        if not isinstance(d, dict):
            raise ValueError(f"sweep key {'.'.join(path)!r}: {'.'.join(path[:i + 1])} is {d!r}, not a mapping, so "
                             "the sweep cannot set a field inside it")
    d[path[-1]] = name_or_factory(value) if path == ["model"] or path == ["data"] else value


def _slug(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("name") or value.get("factory") or "x"
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in str(value))


# -- validation and messages -----------------------------------------------------------------


def _validate(cls: type[BaseModel], data: Any, origin: tuple, lines: dict, problems: list,
              label: Optional[str] = None) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        head = f"{_path(origin)} (job {label!r})" if label else _path(origin)
        for err in exc.errors():
            problems.append(_fmt(err, origin, lines, cls, head))
        return None


def _fmt(err: Mapping[str, Any], origin: tuple, lines: dict, cls: type, head: Optional[str] = None) -> str:
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    field = ".".join(str(x) for x in loc)
    where = head or _path(origin)
    full = f"{where}.{field}" if field else where
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        return _unknown_key_msg(origin + loc, full, allowed, lines)
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    line = _at(origin + loc, lines) or _at(("defaults",) + loc, lines) or _at(origin, lines)
    return f"{full}: {msg}{shown}{line}"


def _unknown_key_msg(loc: tuple, full: str, allowed: Iterable[str], lines: dict) -> str:
    key = str(loc[-1])
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{full}: unknown key {key!r}{hint} Allowed keys: {', '.join(allowed)}{_at(loc, lines)}"


def _allowed_keys(cls: Optional[type], loc: tuple) -> list[str]:
    """Walk the pydantic model along `loc` to the mapping whose key was unknown."""
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        ann = field.annotation if field else None
        cls = next((c for c in _classes(ann) if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(getattr(cls, "model_fields", {})) if cls else []


def _classes(ann: Any) -> list:
    args = getattr(ann, "__args__", None)
    return [c for a in args for c in _classes(a)] if args else [ann]


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "workload"


def _line_map(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    out = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[prefix + (key,)] = k.start_mark.line + 1
            out.update({p: ln for p, ln in _line_map(v, prefix + (key,)).items() if p != prefix + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_line_map(item, prefix + (i,)))
    return out


def _check_duplicate_keys(root: yaml.Node, where: str) -> None:
    """YAML keeps the last of two equal keys in a mapping and drops the first without a word; a
    spec with `steps: 100` and, lower, `steps: 10` is a mistake to show, not to guess at."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias: its node was checked where the anchor is
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if k.value in first:
                        raise SpecError(f"{where}: line {line}, column {k.start_mark.column + 1}: duplicate key "
                                        f"{k.value!r} (first at line {first[k.value]}); YAML would silently keep "
                                        "only the last one -- remove one of them")
                    first[k.value] = line
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _at(loc: tuple, lines: dict) -> str:
    return f" [line {lines[loc]}]" if loc in lines else ""


def _dedupe(problems: list[str]) -> list[str]:
    """Sweep copies of one bad job entry give the same error: show it once, with a count."""
    seen: dict[str, list[str]] = {}
    for p in problems:
        key = re.sub(r" \(job '[^']*'\)", "", p)
        seen.setdefault(key, []).append(p)
    return [v[0] + (f" (and {len(v) - 1} more sweep job(s))" if len(v) > 1 else "")
            for v in seen.values()]


def _join(where: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    return f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


def _read(source: Union[str, os.PathLike]) -> tuple[str, str]:
    if not isinstance(source, (str, os.PathLike)):
        raise SpecError(f"load_workload(source): give a YAML file path or YAML text, not "
                        f"{type(source).__name__} ({source!r:.60})")
    if isinstance(source, str) and ("\n" in source or ": " in source):
        return source, "<yaml>"
    path = Path(source)
    if not path.is_file():
        raise SpecError(f"{path}: no such file; pass a workload YAML, e.g. "
                        "configs/examples/gpt2-sweep.yaml")
    try:
        L.check_size(path.stat().st_size, str(path))
        return path.read_text(), str(path)
    except ValueError as exc:  # too large, or not UTF-8 text
        raise SpecError(str(exc) if not isinstance(exc, UnicodeDecodeError)
                        else f"{path}: not a UTF-8 text file ({exc.reason})") from None
