"""Which catalog model a client's ``model`` names, and which it may use (#21).

A client names a model by its provider id (``claude-sonnet-4-6``), a dated variant
of it (``claude-sonnet-4-6-20260101``) or its catalog name (``sonnet``); the routing
alias (``vibe-auto``), or any request of a ``routing = "routed"`` key, leaves the
choice to the router (R4: the cheapest capable model).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from scheduler.config import ServeKey, VibeConfig
from scheduler.serve._errors import NO_RETRY, error_response

_DATED = re.compile(r"^(?P<base>.+)-\d{8}$")


class ModelMap:
    """The catalog as clients name it."""

    def __init__(self, config: VibeConfig) -> None:
        self.alias = config.serve.routing_alias
        self._by_id: dict[str, str] = {}
        for name, spec in config.models.items():
            self._by_id.setdefault(spec.model_id, name)
            self._by_id.setdefault(name, name)
        self._ids = {name: spec.model_id for name, spec in config.models.items()}
        ranked = sorted((s.rank, n) for n, s in config.models.items() if s.rank is not None)
        self.cheapest_id = self._ids[ranked[0][1]]

    def name_of(self, model: str) -> str | None:
        found = self._by_id.get(model)
        if found is None:
            dated = _DATED.match(model)
            found = self._by_id.get(dated["base"]) if dated else None
        return found

    def upstream_id(self, model: str, name: str) -> str | None:
        """The provider id to send when the client named the model by its catalog name
        (the API knows ids, not our names); None when it sent an id or a dated one."""
        wanted = self._ids[name]
        return wanted if model == name != wanted else None

    def allowed(self, key: ServeKey, name: str) -> bool:
        allowed = key.allowed_models
        return not allowed or name in allowed or self._ids[name] in allowed

    def resolve(self, key: ServeKey, model: Any) -> str | Response | None:
        """The catalog name to call (None: routed), or the API's error response."""
        if model is None or model == "":
            return error_response("invalid_request_error", "model: Field required",
                                  headers=NO_RETRY)
        if not isinstance(model, str):
            return error_response("invalid_request_error", "model: Input should be a valid "
                                  "string", headers=NO_RETRY)
        if model == self.alias or key.routing == "routed":
            return None
        name = self.name_of(model)
        if name is None:
            return error_response("not_found_error", f"model: {model}", headers=NO_RETRY)
        if not self.allowed(key, name):
            return error_response(
                "permission_error",
                f"vibe-engine: key {key.name!r} may not use model {model}; allowed: "
                f"{', '.join(key.allowed_models)} (or {self.alias!r} to route)",
                headers=NO_RETRY)
        return name

    def page(self, key: ServeKey) -> dict[str, Any]:
        """``GET /v1/models``: the alias, then the catalog models the key may use."""
        ids = [self.alias, *(mid for name, mid in self._ids.items() if self.allowed(key, name))]
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in ids]
        return {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
