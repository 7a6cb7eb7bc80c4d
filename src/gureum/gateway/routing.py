"""`RouteTable`: the compiled, immutable route table the gateway matches requests against.

Selection, as AWS's HTTP APIs do it: first the API (an API bound to the request's Host beats
one bound to no host; then the longest matching base path / stage prefix), then the most
specific route of that API — literal segments beat `{param}`, which beats `{proxy+}`, compared
segment by segment from the left; a method beats `ANY` for the same path; `$default` last.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from gureum.control.routes import DEFAULT_ROUTE, PARAM_RE, Api, Route, RouteKey

LITERAL, PARAM, GREEDY = 0, 1, 2


class BadPath(ValueError):
    """The request path is not valid percent-encoded UTF-8."""


def decode_segment(raw: str) -> str:
    """Percent-decode one path segment; BadPath for malformed escapes or non-UTF-8 bytes."""
    if "%" not in raw:
        return raw
    parts = raw.split("%")
    for part in parts[1:]:
        if len(part) < 2 or not all(c in "0123456789abcdefABCDEF" for c in part[:2]):
            raise BadPath(raw)
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadPath(raw) from None


@dataclass(frozen=True)
class _Pattern:
    route: Route
    method: str
    kinds: tuple[int, ...]
    names: tuple[str | None, ...]  # parameter name per segment, None for a literal
    literals: tuple[str, ...]

    @property
    def specificity(self) -> tuple[tuple[int, ...], int]:
        # lower sorts first: literal < param < greedy at the first difference; then
        # a longer literal path wins over a prefix of it; a method beats ANY
        return (*self.kinds, GREEDY + 1), int(self.method == "ANY")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        greedy = bool(self.kinds) and self.kinds[-1] == GREEDY
        if greedy:
            # AWS gives a greedy variable an empty remainder: '/files/' matches
            # '/files/{path+}' with path '', and the root '/' matches '/{proxy+}'
            if len(segments) < len(self.kinds) and (segments or len(self.kinds) != 1):
                return None
        elif len(segments) != len(self.kinds):
            return None
        for index, kind in enumerate(self.kinds):
            if kind == GREEDY:
                params[self.names[index] or ""] = "/".join(segments[index:])
                return params
            segment = segments[index]
            if kind == LITERAL:
                if segment != self.literals[index]:
                    return None
            else:
                if not segment:
                    return None
                params[self.names[index] or ""] = segment
        return params


@dataclass(frozen=True)
class RouteMatch:
    api: Api
    route: Route
    path_params: dict[str, str]


class _ApiRoutes:
    def __init__(self, api: Api, routes: list[Route]) -> None:
        self.api = api
        self.default: Route | None = None
        # keyed by the decoded segments, not a joined path: '/a%2Fb' is one segment, 'a/b',
        # and must not reach the route 'GET /a/b'
        self.exact: dict[tuple[str, tuple[str, ...]], Route] = {}
        patterns: list[_Pattern] = []
        for route in routes:
            key = RouteKey.parse(route.route_key)
            if key.method == DEFAULT_ROUTE:
                self.default = route
                continue
            kinds: list[int] = []
            names: list[str | None] = []
            literals: list[str] = []
            for segment in key.segments:
                param = PARAM_RE.match(segment)
                if param is None:
                    kinds.append(LITERAL)
                    names.append(None)
                    literals.append(segment)
                else:
                    kinds.append(GREEDY if param.group(2) else PARAM)
                    names.append(param.group(1))
                    literals.append("")
            if all(kind == LITERAL for kind in kinds):
                self.exact[(key.method, tuple(literals))] = route
            else:
                patterns.append(
                    _Pattern(route, key.method, tuple(kinds), tuple(names), tuple(literals))
                )
        self.patterns = sorted(patterns, key=lambda p: p.specificity)

    def match(self, method: str, segments: list[str]) -> RouteMatch | None:
        path = tuple(segments)
        for candidate in (method, "ANY"):
            route = self.exact.get((candidate, path))
            if route is not None:
                return RouteMatch(self.api, route, {})
        for pattern in self.patterns:
            if pattern.method not in (method, "ANY"):
                continue
            params = pattern.match(segments)
            if params is not None:
                return RouteMatch(self.api, pattern.route, params)
        if self.default is not None:
            return RouteMatch(self.api, self.default, {})
        return None


class RouteTable:
    """Immutable; build a new one when the configuration changes."""

    def __init__(self, apis: list[tuple[Api, list[Route]]]) -> None:
        by_host: dict[str, list[_ApiRoutes]] = {}
        for api, routes in apis:
            by_host.setdefault(api.host, []).append(_ApiRoutes(api, routes))
        for entries in by_host.values():
            entries.sort(key=lambda e: len(e.api.prefix), reverse=True)
        self._by_host = by_host

    def find_api(self, host: str, raw_path: str) -> tuple[_ApiRoutes, str] | None:
        """The API serving this host and path, and the path below the API's prefix."""
        for key in (host, ""):
            for entry in self._by_host.get(key, ()):
                prefix = entry.api.prefix
                if not prefix:
                    return entry, raw_path
                if raw_path == prefix or raw_path.startswith(prefix + "/"):
                    return entry, raw_path[len(prefix) :] or "/"
            if not host:
                break
        return None

    @staticmethod
    def match(entry: _ApiRoutes, method: str, rest: str) -> RouteMatch | None:
        """The route for `method` and the raw path below the API prefix; BadPath if the
        path does not decode."""
        segments = [decode_segment(s) for s in rest[1:].split("/")] if rest != "/" else []
        return entry.match(method, segments)
