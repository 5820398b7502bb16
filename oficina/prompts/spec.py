"""A prompt as a user writes it (``prompt.yaml``) and its checks::

    description: Translate a short text
    template: |
      Translate into {{ language }}. Answer with the translation only.
      {{ text }}
    variables:                       # a list of names, or name -> {description, default}
      language: {default: Portuguese}
      text: {description: the text to translate}
    models: [smollm2]
    parameters: {temperature: 0, num_predict: 40}
    examples:
      - vars: {text: Good morning}
        expect: Bom dia              # shorthand for a ``contains`` check
        checks: [{not_contains: Good morning}, {max_chars: 80}]

Templates are Jinja rendered in ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` (as
chat templates are, ``formats/template.py``): no attribute of Python internals, no undefined
name rendered as empty text. A template that uses a variable it does not declare, or declares
one it never uses, is refused with the file and line.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import OficinaError
from ..formats.untrusted import read_text
from ..options import validate_mapping

FIELDS = ("template", "variables", "description", "examples", "models", "parameters")
CHECKS = ("contains", "not_contains", "equals", "regex", "max_chars", "min_chars")
MAX_BYTES = 1 << 20


class PromptError(OficinaError):
    """A prompt file, template or render that cannot be used; names the file and place."""


class _Dumper(yaml.SafeDumper):
    """Multi-line text as a ``|`` block, so ``show`` and ``diff`` read like the file."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)


@dataclass
class Variable:
    description: str = ""
    default: str | None = None


@dataclass
class Example:
    vars: dict[str, str]
    checks: list[dict[str, Any]]


@dataclass
class PromptSpec:
    template: str
    variables: dict[str, Variable] = field(default_factory=dict)
    description: str = ""
    examples: list[Example] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSpec:
        return cls(d["template"], {k: Variable(**v) for k, v in d["variables"].items()},
                   d["description"], [Example(**e) for e in d["examples"]], d["models"], d["parameters"])

    def to_yaml(self) -> str:
        d = self.to_dict()
        d["variables"] = {k: {kk: vv for kk, vv in v.items() if vv not in ("", None)}
                          for k, v in d["variables"].items()}
        return yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    def render(self, values: dict[str, Any] | None = None, where: str = "prompt") -> str:
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise PromptError(f"{where}: unknown variable(s) {', '.join(unknown)}; "
                              f"declared: {', '.join(self.variables) or 'none'}")
        for k, v in self.variables.items():
            if k not in values:
                if v.default is None:
                    raise PromptError(f"{where}: variable {k!r} has no value and no default "
                                      f"(--var {k}=...)")
                values[k] = v.default
        try:
            return _ENV.from_string(self.template).render(**values)
        except SecurityError as e:
            raise PromptError(f"{where}: template refused by the sandbox: {e}") from None
        except jinja2.TemplateError as e:
            raise PromptError(f"{where}: template line {getattr(e, 'lineno', '?')}: {e}") from None


def _line_of(node: yaml.Node | None, key: str) -> int:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return k.start_mark.line + 1
    return 1


def _template_offset(node: yaml.Node | None) -> int:
    """The file line the template's first line is on (block scalars start on the next line)."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == "template":
                return v.start_mark.line + (1 if v.style in ("|", ">") else 0)
    return 0


def parse(text: str, where: str = "prompt.yaml") -> PromptSpec:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PromptError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise PromptError(f"{where}: expected a mapping with {', '.join(FIELDS)}")
    at = lambda key: f"{where}:{_line_of(root, key)}"
    extra = sorted(set(data) - set(FIELDS))
    if extra:
        raise PromptError(f"{at(extra[0])}: unknown field {extra[0]!r}; valid: {', '.join(FIELDS)}")
    template = data.get("template")
    if not isinstance(template, str) or not template.strip():
        raise PromptError(f"{at('template')}: 'template' must be non-empty text")
    variables = _variables(data.get("variables"), at("variables"))
    offset = _template_offset(root)
    try:
        tree = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(f"{where}:{offset + (e.lineno or 1)}: template syntax error: {e.message}") from None
    used = meta.find_undeclared_variables(tree)
    undefined = sorted(used - set(variables))
    if undefined:
        line = min(n.lineno for n in tree.find_all(nodes.Name) if n.name == undefined[0])
        raise PromptError(f"{where}:{offset + line}: template uses {undefined[0]!r}, which is not "
                          f"declared in 'variables' (declared: {', '.join(variables) or 'none'})")
    unused = [v for v in variables if v not in used]
    if unused:
        raise PromptError(f"{at('variables')}: variable {unused[0]!r} is declared but the template "
                          f"never uses it")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise PromptError(f"{at('description')}: 'description' must be text")
    models = data.get("models") or []
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise PromptError(f"{at('models')}: 'models' must be a list of model names")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise PromptError(f"{at('parameters')}: 'parameters' must be a mapping")

    try:
        params = validate_mapping(params)
    except OficinaError as e:
        raise PromptError(f"{at('parameters')}: {e}") from None
    spec = PromptSpec(template, variables, description, [], models, params)
    spec.examples = _examples(data.get("examples"), spec, at("examples"))
    return spec


def read(path: str | Path) -> PromptSpec:
    p = Path(path)
    return parse(read_text(p, MAX_BYTES, "prompt file", PromptError), str(p))


def _variables(raw: Any, where: str) -> dict[str, Variable]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        raw = {name: {} for name in raw}
    if not isinstance(raw, dict):
        raise PromptError(f"{where}: 'variables' must be a list of names or a mapping")
    out = {}
    for name, v in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise PromptError(f"{where}: variable name {name!r} must be an identifier")
        v = v or {}
        if isinstance(v, str):
            v = {"description": v}
        if not isinstance(v, dict) or set(v) - {"description", "default"}:
            raise PromptError(f"{where}: variable {name!r}: expected {{description, default}}")
        default = v.get("default")
        out[name] = Variable(str(v.get("description") or ""), None if default is None else str(default))
    return out


def _examples(raw: Any, spec: PromptSpec, where: str) -> list[Example]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PromptError(f"{where}: 'examples' must be a list")
    out = []
    for i, e in enumerate(raw):
        here = f"{where}: example {i + 1}"
        if not isinstance(e, dict) or set(e) - {"vars", "expect", "checks"}:
            raise PromptError(f"{here}: expected vars, expect, checks")
        values = {k: str(v) for k, v in (e.get("vars") or {}).items()}
        spec.render(values, here)  # every example must render
        checks = list(e.get("checks") or [])
        if e.get("expect") is not None:
            checks.insert(0, {"contains": str(e["expect"])})
        for c in checks:
            if not isinstance(c, dict) or len(c) != 1 or next(iter(c)) not in CHECKS:
                raise PromptError(f"{here}: a check is one of {', '.join(CHECKS)} with a value, got {c!r}")
            kind, value = next(iter(c.items()))
            if kind == "regex":
                try:
                    re.compile(str(value))
                except re.error as err:
                    raise PromptError(f"{here}: invalid regex {value!r}: {err}") from None
            if kind in ("max_chars", "min_chars") and not isinstance(value, int):
                raise PromptError(f"{here}: {kind} needs a whole number")
        out.append(Example(values, checks))
    return out


def run_check(check: dict[str, Any], answer: str) -> bool:
    kind, value = next(iter(check.items()))
    a = answer.strip()
    if kind == "contains":
        return str(value).lower() in a.lower()
    if kind == "not_contains":
        return str(value).lower() not in a.lower()
    if kind == "equals":
        return a == str(value).strip()
    if kind == "regex":
        return re.search(str(value), a) is not None
    if kind == "max_chars":
        return len(a) <= value
    return len(a) >= value
