"""Loading and checking policy files: YAML with line numbers, pydantic, then the connectors.

`policy check` and the running gateway use the same code, so a file `check` accepts is a file the
gateway loads. Every problem is reported as `file:line: reason`; the YAML loader remembers the line
of every mapping and key, so a semantic error (unknown action, bad regex) points at the line of the
offending key rather than at the top of the file. Duplicate keys are errors: PyYAML would keep the
last one silently, and a second `params:` would drop the first's constraints.

Checks beyond the model: the connector and each action exist; parameter paths, budget fields and
approval names are whole field paths of the action's request model (`gateway.policy.paths`: a
misspelt `amont: {max: ...}` or `messages[*].rol` would otherwise constrain nothing; at least one of
the rule's actions must have the path);
`fail_open` only on rules whose actions are all reads (GET); a budget field is a number in every
action that has it (a string one would refuse every call); no two unnamed rules of the set count
in one counter (`shared_counters`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from connectors.model import Action, Connector
from gateway.errors import ConfigError
from gateway.policy.engine import LoadedFile, PolicySet
from gateway.policy.expr import CONTEXT_NAMES
from gateway.policy.model import PolicyFile, Rule
from gateway.policy.paths import never_a_number, unknown_path

ConnectorLookup = Callable[[str], Connector | None]


@dataclass(frozen=True)
class Problem:
    """One reason a policy file cannot be loaded."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line or 1}: {self.reason}"


class PolicyLoadError(ConfigError):
    """The policy directory does not load; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 1
    key_lines: dict[Any, int]


# The most nodes a document may have once its aliases are expanded. Aliases are followed, not
# copied, when a document is read, but everything after (validation, checks) walks the expansion:
# ten lines of nested aliases ("billion laughs") are 10^9 nodes. 200,000 is some 15,000 rules.
MAX_YAML_NODES = 200_000


class LineLoader(yaml.SafeLoader):
    """The safe loader whose mappings are `LineDict`s and refuse a duplicate key (PyYAML keeps the
    last one silently); gateway.yaml is read with it too (`gateway.config.load`), and declarative
    connectors (`gateway.connector_admin`, also from the admin API).

    A document larger than `MAX_YAML_NODES` once expanded, one that refers to itself, or one nested
    deeper than Python's recursion limit is a YAML error, not a hang or a RecursionError."""

    def get_single_data(self) -> Any:
        try:
            node = self.get_single_node()
            if node is None:
                return None
            _check_expansion(node)
            return self.construct_document(node)
        except RecursionError:
            raise yaml.YAMLError("the document nests too deeply") from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion exceeds `MAX_YAML_NODES` or has a cycle (without
    recursion: a deep document is read iteratively here; each node is sized once)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the document expands to more than {MAX_YAML_NODES} nodes (aliases included)",
                    node.start_mark,
                )
            sizes[id(node)] = size
        elif id(node) in open_:
            raise yaml.constructor.ConstructorError(None, None, "an alias refers to itself", node.start_mark)
        elif id(node) not in sizes:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))


def _construct_map(loader: LineLoader, node: yaml.MappingNode) -> Iterable[LineDict]:
    data = LineDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    loader.flatten_mapping(node)
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in data.key_lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        data.key_lines[key] = key_node.start_mark.line + 1
    data.update(loader.construct_mapping(node, deep=True))


LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def policy_files(directory: Path) -> list[Path]:
    """The policy files of a directory, in the order they are evaluated and hashed."""
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())


def content_digest(contents: Iterable[tuple[str, bytes]]) -> str:
    """The policy bundle's sha256 (hex) over every file's name and bytes, in name order: what
    `attest.pin.policies` pins; its first 16 characters are the policy version."""
    h = hashlib.sha256()
    for name, data in sorted(contents):
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def read_yaml(name: str, text: bytes) -> tuple[Any, list[Problem]]:
    """YAML (or JSON) text whose mappings are `LineDict`s, or the problem that stops it loading;
    also what declarative connector files are read with (`gateway.connector_admin`)."""
    try:
        return yaml.load(text, Loader=LineLoader), []
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        return None, [Problem(name, line, f"bad YAML: {e.problem or e.context}")]
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        return None, [Problem(name, None, f"bad YAML: {e}")]


def parse_file(name: str, text: bytes, lookup: ConnectorLookup) -> tuple[LoadedFile | None, list[Problem]]:
    """One file's text to a checked `LoadedFile`, or the problems found in it."""
    data, problems = read_yaml(name, text)
    if problems:
        return None, problems
    if not isinstance(data, LineDict):
        return None, [Problem(name, 1, "a policy file must be a mapping (version, subjects, rules, ...)")]
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as e:
        return None, [_from_pydantic(name, data, err) for err in e.errors()]
    problems = [
        Problem(name, line, reason)
        for index, rule in enumerate(model.rules)
        for line, reason in _check_rule(rule, data["rules"][index], lookup)
    ]
    if problems:
        return None, problems
    rule_lines = tuple(getattr(r, "line", 1) for r in data.get("rules") or [])
    return LoadedFile(name=name, policy=model, rule_lines=rule_lines), []


def locate(data: LineDict, loc: Sequence[Any]) -> tuple[int, list[str]]:
    """The line of the deepest part of `loc` present in `data`, and the parts found on the way
    (keys a model's union or validator adds to `loc` are not in the data and are skipped)."""
    line, node = data.line, data
    where: list[str] = []
    for key in loc:
        if isinstance(node, LineDict) and key in node:
            line = node.key_lines.get(key, line)
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
            line = getattr(node, "line", line)
        else:
            if isinstance(key, str) and not where:
                where.append(key)
            continue
        where.append(str(key))
    return line, where


def _from_pydantic(name: str, data: LineDict, err: Any) -> Problem:
    loc = err["loc"]
    line, where = locate(data, loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field {str(loc[-1])!r}"
    field = ".".join(where)
    return Problem(name, line, f"{field}: {msg}" if field else msg)


def _check_rule(rule: Rule, raw: LineDict, lookup: ConnectorLookup) -> list[tuple[int, str]]:
    line = raw.line
    kl = raw.key_lines
    connector = lookup(rule.connector)
    if connector is None:
        return [(kl.get("connector", line), f"unknown connector {rule.connector!r}")]
    out: list[tuple[int, str]] = []
    actions: list[Action] = []
    for name in rule.actions:
        action = connector.action(name)
        if action is None:
            out.append((kl.get("actions", line), f"unknown action {name!r} of connector {rule.connector!r}"))
        else:
            actions.append(action)
    if out:
        return out
    if rule.fail_open and any(a.method != "GET" for a in actions):
        out.append((kl.get("fail_open", line), "fail_open is only allowed when every action is a read (GET)"))
    for path in rule.params:
        out.extend(_unknown(raw["params"].key_lines.get(path, line), path, actions, "parameter"))
    if rule.budget is not None:
        field = rule.budget.field
        out.extend(_unknown(kl.get("budget", line), field, actions, "budget field"))
        for a in actions:
            if (kind := never_a_number(a, field)) is not None:
                out.append((kl.get("budget", line), f"budget field {field!r} is {kind} in {a.name}, never a number: "
                            "a budget sums numbers, so every call carrying it would be refused"))
    if rule.approval_expr is not None:
        for name in sorted(rule.approval_expr.names):
            head, _, rest = name.partition(".")
            if head in CONTEXT_NAMES and not rest:
                continue
            path = rest if head == "params" else name
            out.extend(_unknown(kl.get("approval", line), path, actions, "approval name"))
    return out


def _unknown(line: int, path: str, actions: list[Action], what: str) -> list[tuple[int, str]]:
    """A path no action of the rule has (a typo that would constrain nothing); one action suffices,
    since a rule may cover actions with different fields (create and confirm a payment)."""
    reasons = [unknown_path(a, path) for a in actions]
    if any(r is None for r in reasons):
        return []
    return [(line, f"{what} {path!r}: {reasons[0]} ({', '.join(a.name for a in actions)})")]


def shared_counters(files: Sequence[LoadedFile]) -> list[Problem]:
    """Rules of one policy set that would count in one counter (`gateway.policy.counters`): unnamed
    ones counting the same thing (the same tenant, subjects, connector, actions and budget field and
    period, or rate window), or two of one name for the same tenant and subjects. Two limits on one
    counter would each see the other's spend, and a call both cover would be charged twice; which
    rule was meant is ambiguous, so it is a load error asking for (distinct) names."""
    first: dict[tuple[str, str], tuple[str, int]] = {}
    problems: list[Problem] = []
    for f in files:
        for i, rule in enumerate(f.policy.rules):
            here = (f.name, f.rule_lines[i] if i < len(f.rule_lines) else 1)
            counters = f.counters[i]
            kinds = [("budget", counters.budget)] if counters.budget else []
            kinds += [("rate", c) for c in counters.rates]
            for kind, counter in dict.fromkeys(kinds):
                assert counter is not None
                seen = first.setdefault((kind, counter[1]), here)
                if seen == here:
                    continue
                if rule.name is not None:
                    why = (f"this rule and the rule at {seen[0]}:{seen[1]} are both named {rule.name!r} for the same tenant "
                           f"and subjects, so their {kind} would share one counter; give each its own `name:`")
                else:
                    why = (f"this rule and the rule at {seen[0]}:{seen[1]} count the same {kind} (same tenant, subjects, "
                           "connector, actions and " + ("field and period" if kind == "budget" else "window")
                           + ") and neither has a name, so they would share one counter; give each a `name:`")
                problems.append(Problem(here[0], here[1], why))
    return problems


def unnamed_counters(files: Sequence[LoadedFile]) -> list[Problem]:
    """Warnings (not errors) for rules with a rate or budget but no `name:`: their counters are
    keyed by what they count, so an edit of their tenant, subjects, connector, actions or budget
    field starts them afresh; a name keeps them across any edit."""
    return [
        Problem(f.name, f.rule_lines[i] if i < len(f.rule_lines) else 1, (
            "warning: this rule has a " + " and a ".join(k for k in ("rate", "budget") if getattr(rule, k) is not None)
            + " but no name; naming it (`name:`) keeps its counters across edits of its subjects, actions or fields"
        ))
        for f in files
        for i, rule in enumerate(f.policy.rules)
        if rule.name is None and (rule.rate is not None or rule.budget is not None)
    ]


@dataclass(frozen=True)
class CheckResult:
    """What `policy check` found: problems (exit 1) and warnings (printed, exit 0)."""

    problems: list[Problem]
    warnings: list[Problem]


def check(paths: Iterable[Path], lookup: ConnectorLookup) -> CheckResult:
    """`policy check`: every problem and warning in the given files or directories. A directory is
    checked as the set the gateway would load (rules across its files must not share a counter)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files = policy_files(path)
        elif path.is_file():
            files = [path]
        else:
            problems.append(Problem(str(path), None, "no such file or directory"))
            continue
        loaded: list[LoadedFile] = []
        for f in files:
            one, found = parse_file(str(f), f.read_bytes(), lookup)
            problems.extend(found)
            if one is not None:
                loaded.append(one)
        problems.extend(shared_counters(loaded))
        warnings.extend(unnamed_counters(loaded))
    return CheckResult(problems, warnings)


def check_paths(paths: Iterable[Path], lookup: ConnectorLookup) -> list[Problem]:
    """The problems `check` finds (empty list = all good)."""
    return check(paths, lookup).problems


def read_directory(directory: Path) -> dict[str, bytes]:
    """Every policy file's bytes by file name; one read so the version matches what loads."""
    if not directory.is_dir():
        raise PolicyLoadError([Problem(str(directory), None, "policy directory does not exist")])
    return {p.name: p.read_bytes() for p in policy_files(directory)}


def build_policy_set(contents: dict[str, bytes], lookup: ConnectorLookup) -> PolicySet:
    """A whole `PolicySet` from file contents, or `PolicyLoadError` listing every problem."""
    files: list[LoadedFile] = []
    problems: list[Problem] = []
    for name in sorted(contents):
        loaded, found = parse_file(name, contents[name], lookup)
        problems.extend(found)
        if loaded is not None:
            files.append(loaded)
    problems.extend(shared_counters(files))
    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(files=tuple(files), digest=content_digest(contents.items()))


def load_policy_set(directory: Path, lookup: ConnectorLookup) -> PolicySet:
    """Load a policy directory (all `*.yaml`, sorted by name)."""
    return build_policy_set(read_directory(directory), lookup)
