"""Lambda API routes for event sources: event source mappings (2015-03-31) and async invoke
configs (2019-09-25), served on the `LambdaAPI` router."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gureum.control.models import parse_function_ref
from gureum.errors import InvalidParameterValue, ResourceNotFound
from gureum.gateway.lambda_api import body_json, identity
from gureum.gateway.responses import json_response
from gureum.platform import Platform

ESM = "/2015-03-31/event-source-mappings"
EIC = "/2019-09-25/functions/{name}/event-invoke-config"


class LambdaEventRoutes:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.region = platform.settings.region

    def routes(self) -> list[Route]:
        return [
            Route(ESM + "/", self.create_mapping, methods=["POST"]),
            Route(ESM, self.create_mapping, methods=["POST"]),
            Route(ESM + "/", self.list_mappings, methods=["GET"]),
            Route(ESM, self.list_mappings, methods=["GET"]),
            Route(ESM + "/{uuid}", self.get_mapping, methods=["GET"]),
            Route(ESM + "/{uuid}", self.update_mapping, methods=["PUT"]),
            Route(ESM + "/{uuid}", self.delete_mapping, methods=["DELETE"]),
            Route(EIC, self.put_invoke_config, methods=["PUT"]),
            Route(EIC, self.update_invoke_config, methods=["POST"]),
            Route(EIC, self.get_invoke_config, methods=["GET"]),
            Route(EIC, self.delete_invoke_config, methods=["DELETE"]),
            Route(
                "/2019-09-25/functions/{name}/event-invoke-config/list",
                self.list_invoke_configs,
                methods=["GET"],
            ),
        ]

    # ---- event source mappings ---------------------------------------------------------------

    async def create_mapping(self, request: Request) -> Response:
        body = await body_json(request)
        mapping = await self.platform.events.mappings.create(identity(request).account_id, body)
        return json_response(mapping.to_aws(self.region), 202)

    async def list_mappings(self, request: Request) -> Response:
        found = await self.platform.events.mappings.list_mappings(
            identity(request).account_id,
            request.query_params.get("EventSourceArn"),
            request.query_params.get("FunctionName"),
        )
        marker = request.query_params.get("Marker")
        if marker:
            ids = [m.uuid for m in found]
            if marker not in ids:
                raise InvalidParameterValue(f"Invalid Marker: {marker}")
            found = found[ids.index(marker) + 1 :]
        raw_max = request.query_params.get("MaxItems", "100")
        if not raw_max.isdecimal() or not 1 <= int(raw_max) <= 10000:
            raise InvalidParameterValue("MaxItems must be between 1 and 10000")
        page = found[: int(raw_max)]
        body: dict[str, object] = {"EventSourceMappings": [m.to_aws(self.region) for m in page]}
        if len(found) > len(page):
            body["NextMarker"] = page[-1].uuid
        return json_response(body)

    async def get_mapping(self, request: Request) -> Response:
        mapping = await self.platform.events.mappings.get(
            identity(request).account_id, request.path_params["uuid"]
        )
        return json_response(mapping.to_aws(self.region))

    async def update_mapping(self, request: Request) -> Response:
        body = await body_json(request)
        mapping = await self.platform.events.mappings.update(
            identity(request).account_id, request.path_params["uuid"], body
        )
        return json_response(mapping.to_aws(self.region), 202)

    async def delete_mapping(self, request: Request) -> Response:
        mapping = await self.platform.events.mappings.delete(
            identity(request).account_id, request.path_params["uuid"]
        )
        return json_response({**mapping.to_aws(self.region), "State": "Deleting"}, 202)

    # ---- event invoke configs ----------------------------------------------------------------

    async def _function(self, request: Request) -> tuple[str, str, str | None]:
        name, qualifier, account = parse_function_ref(request.path_params["name"], self.region)
        caller = identity(request).account_id
        if account is not None and account != caller:
            raise ResourceNotFound(f"Function not found: {request.path_params['name']}")
        qualifier = request.query_params.get("Qualifier") or qualifier
        await self.platform.registry.get_function(caller, name, qualifier)
        return caller, name, qualifier

    async def put_invoke_config(self, request: Request) -> Response:
        account, name, qualifier = await self._function(request)
        body = await body_json(request)
        config = await self.platform.async_invoker.configs.put(
            account, name, qualifier, body, merge=False
        )
        return json_response(config.to_aws(self.region))

    async def update_invoke_config(self, request: Request) -> Response:
        account, name, qualifier = await self._function(request)
        body = await body_json(request)
        config = await self.platform.async_invoker.configs.put(
            account, name, qualifier, body, merge=True
        )
        return json_response(config.to_aws(self.region))

    async def get_invoke_config(self, request: Request) -> Response:
        account, name, qualifier = await self._function(request)
        config = await self.platform.async_invoker.configs.get(account, name, qualifier)
        return json_response(config.to_aws(self.region))

    async def delete_invoke_config(self, request: Request) -> Response:
        account, name, qualifier = await self._function(request)
        await self.platform.async_invoker.configs.delete(account, name, qualifier)
        return Response(status_code=204)

    async def list_invoke_configs(self, request: Request) -> Response:
        account, name, _ = await self._function(request)
        found = []
        for qualifier in [
            None,
            *[v.version for v in await self.platform.registry.list_versions(account, name)],
        ]:
            config = await self.platform.async_invoker.configs.find(account, name, qualifier)
            if config is not None and config not in found:
                found.append(config)
        return json_response({"FunctionEventInvokeConfigs": [c.to_aws(self.region) for c in found]})
