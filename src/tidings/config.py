"""tidings.yaml: typed settings, `${ENV}` secrets, `*_file` secrets, and errors that name file:line:key.

Loading happens in three steps, each reporting every problem it finds, not just the first:
YAML parsing (with positions kept), substitution of `${VAR}` references and `*_file` paths, and
validation against the pydantic models below.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from tidings.configmodel import ConfigModel, Duration, Name, SecretList, parse_duration
from tidings.destinations.registry import DestinationSettingsUnion
from tidings.exceptions import ConfigProblem, ConfigurationError
from tidings.flows.check import flow_problems
from tidings.flows.model import Flow, GlobalGuards
from tidings.ingest.registry import SourceSettingsUnion
from tidings.profiles.traits import ProfileSettings

# Re-exported: settings models across tidings build on these.
__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ConfigModel",
    "Duration",
    "Name",
    "SecretList",
    "Settings",
    "load_settings",
    "parse_duration",
    "parse_settings",
]

DEFAULT_CONFIG_FILE = "tidings.yaml"


class AdminToken(ConfigModel):
    """A bearer token for /api/v1: the secret itself (`token`), or only its SHA-256 in hex
    (`token_sha256`, as `tidings token new` prints it) so the file need not hold the secret.
    Either way only the digest is compared, in constant time (`tidings.api.auth`)."""

    name: str
    token: SecretStr | None = None
    token_sha256: str | None = Field(default=None, repr=False)
    scopes: list[Literal["read", "write"]] = ["read"]
    _digest: bytes = PrivateAttr(default=b"")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("an admin token must be at least 16 characters")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
            raise ValueError("expected the token's SHA-256 as 64 hex digits (`tidings token new` prints it)")
        return value.strip().lower() if value is not None else None

    @model_validator(mode="after")
    def _one_secret(self) -> AdminToken:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give either token or token_sha256 (exactly one)")
        secret = self.token.get_secret_value() if self.token is not None else None
        self._digest = (
            hashlib.sha256(secret.encode()).digest()
            if secret is not None
            else bytes.fromhex(str(self.token_sha256))
        )
        return self

    @property
    def digest(self) -> bytes:
        """The SHA-256 of the token: all that a presented bearer is compared with."""
        return self._digest


class ServerSettings(ConfigModel):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_pending_writes: int = Field(default=20_000, gt=0)
    admin_tokens: list[AdminToken] = []

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StorageSettings(ConfigModel):
    url: str = Field(default="sqlite:///tidings.db", repr=False)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    dedupe_window: Duration = timedelta(days=7)
    auto_migrate: bool = True
    max_commit_batch: int = Field(default=2000, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("storage.url must start with sqlite:// or postgresql://")
        return value


class Settings(ConfigModel):
    """The whole of tidings.yaml."""

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    sources: dict[Name, SourceSettingsUnion] = {}
    # Sections owned by later stages; their place in the file is fixed now.
    destinations: dict[Name, DestinationSettingsUnion] = {}
    profile: ProfileSettings = ProfileSettings()
    flows: dict[Name, Flow] = {}
    guards: GlobalGuards = GlobalGuards()  # applied to the sends of every flow
    privacy: dict[str, Any] = {}
    sandbox: bool = False


# --------------------------------------------------------------------------- loading

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$\{")


class _Loader:
    def __init__(self, file: str, environ: dict[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.base_dir = Path(file).resolve().parent
        # Values left unknown by a problem above; validation errors about them would only repeat it.
        self.voided: set[str] = set()

    def problem(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, line, path, message))

    def resolve(self, node: Any, path: str, line: int | None) -> Any:
        """Plain data from the YAML tree, with `${VAR}` and `*_file` resolved."""
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                key_line = node.lc.key(key)[0] + 1
                sub = f"{path}.{key}" if path else str(key)
                resolved = self.resolve(value, sub, key_line)
                if isinstance(key, str) and key.endswith("_file") and isinstance(resolved, str):
                    target = key[: -len("_file")]
                    if target in node:
                        self.problem(key_line, sub, f"set either {target} or {key}, not both")
                        continue
                    content = None if sub in self.voided else self.read_secret_file(resolved, sub, key_line)
                    if content is not None:
                        out[target] = content
                    else:
                        self.voided.add(sub)
                    continue
                out[str(key)] = resolved
            return out
        if isinstance(node, CommentedSeq):
            return [
                self.resolve(value, f"{path}[{i}]", node.lc.item(i)[0] + 1) for i, value in enumerate(node)
            ]
        if isinstance(node, str):
            return self.substitute(node, path, line)
        return node

    def substitute(self, text: str, path: str, line: int | None) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if default is not None and not value:  # as in the shell: unset or empty
                return default
            if value is not None:
                return value
            self.problem(line, path, f"environment variable {name} is not set")
            self.voided.add(path)
            return ""

        return _ENV_REF.sub(replace, text) if "$" in text else text

    def read_secret_file(self, name: str, path: str, line: int | None) -> str | None:
        file = (self.base_dir / name).expanduser()
        try:
            return file.read_text().strip()
        except OSError as exc:
            self.problem(line, path, f"cannot read {file}: {exc.strerror}")
            return None


def _line_of(tree: Any, loc: tuple[int | str, ...]) -> tuple[int | None, str]:
    """The line and dotted path of a pydantic error location in the YAML tree."""
    node, line, parts = tree, None, []
    for part in loc:
        if isinstance(node, CommentedMap):
            key = part if part in node else f"{part}_file" if f"{part}_file" in node else None
            if key is None:
                if not (isinstance(part, str) and node.get("kind") == part):  # not the union tag
                    parts.append(str(part))  # a missing key: named, at its parent's line
                    node = None
                continue
            line = node.lc.key(key)[0] + 1
            parts.append(str(key))  # as written: `secrets_file` when the value came from a file
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
            node = node[part]
        elif isinstance(part, str) and not part.startswith(("function-", "tagged-union")):
            parts.append(part)
    return line, ".".join(parts)


def _pydantic_problems(file: str, tree: Any, error: ValidationError) -> Iterator[ConfigProblem]:
    for err in error.errors(include_url=False, include_input=False):
        loc, message = tuple(err["loc"]), err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            from tidings.destinations.registry import DESTINATIONS
            from tidings.ingest.registry import RECEIVERS

            kinds = DESTINATIONS if loc and loc[0] == "destinations" else RECEIVERS
            loc, known = (*loc, "kind"), ", ".join(kinds)
            tag = (err.get("ctx") or {}).get("tag")
            message = f"unknown kind {tag!r}; known kinds: {known}" if tag else f"Field required ({known})"
        if loc and loc[-1] == "[key]":  # the key itself is wrong (a section or source name)
            loc = loc[:-1]
            if err["type"] == "string_pattern_mismatch":
                message = "not a valid name: letters, digits, '_' and '-', at most 63"
        line, path = _line_of(tree, loc)
        yield ConfigProblem(file, line, path, message)


def _repeats(problem: ConfigProblem, voided: set[str]) -> bool:
    """Whether a validation problem is about a value a loading problem already explained."""
    return any(v == problem.path or v.startswith((f"{problem.path}.", f"{problem.path}[")) for v in voided)


def load_settings(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Settings:
    """Read and validate a tidings.yaml; raise ConfigurationError listing every problem."""
    file = str(path)
    try:
        text = Path(file).read_text()
    except OSError as exc:
        raise ConfigurationError([ConfigProblem(file, None, "", f"cannot read: {exc.strerror}")]) from exc
    return parse_settings(text, file, environ)


def parse_settings(text: str, file: str = "<string>", environ: dict[str, str] | None = None) -> Settings:
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigurationError([ConfigProblem(file, line, "", f"invalid YAML: {exc.problem}")]) from exc
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, CommentedMap):
        raise ConfigurationError([ConfigProblem(file, 1, "", "the top level must be a mapping of sections")])
    loader = _Loader(file, dict(os.environ) if environ is None else environ)
    data = loader.resolve(tree, "", None)
    problems = loader.problems
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        found = _pydantic_problems(file, tree, exc)
        problems = problems + [p for p in found if not _repeats(p, loader.voided)]
        settings = None
    if settings is not None:
        for loc, message in flow_problems(settings.flows, settings.destinations, settings.sources):
            line, where = _line_of(tree, loc)
            problems.append(ConfigProblem(file, line, where, message))
    if problems:
        raise ConfigurationError(sorted(problems, key=lambda p: (p.line or 0, p.path)))
    assert settings is not None
    return settings
