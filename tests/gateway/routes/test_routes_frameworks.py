"""Frameworks built on the HTTP API contract run unchanged behind user routes: a FastAPI app
wrapped with Mangum (through a `{proxy+}` route) and an aws-lambda-powertools
`APIGatewayHttpResolver` handler. Both are test dependencies; their installed packages (and
what they import) are copied into the function's code package, as `pip install -t` would."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from gureum.client import Client
from tests.gateway.routes.conftest import Deploy

pytest.importorskip("mangum")
pytest.importorskip("fastapi")
pytest.importorskip("aws_lambda_powertools")

# provided by the runtime itself, or only there because of how this interpreter was set up
_NOT_PACKAGED = {"_distutils_hack", "botocore", "boto3", "s3transfer", "dateutil", "urllib3"}

FASTAPI_APP = """
from fastapi import FastAPI, Header, Request
from pydantic import BaseModel
from mangum import Mangum

app = FastAPI()

class Item(BaseModel):
    name: str
    price: float

@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None, x_trace: str | None = Header(None)):
    return {"item_id": item_id, "q": q, "trace": x_trace}

@app.post("/items", status_code=201)
def create_item(item: Item):
    return {"created": item.name, "price": item.price}

@app.get("/cookie")
def cookie(request: Request):
    from fastapi.responses import JSONResponse
    response = JSONResponse({"seen": request.cookies.get("session")})
    response.set_cookie("flavour", "oat")
    response.set_cookie("size", "large")
    return response

handler = Mangum(app, lifespan="off")
"""

POWERTOOLS_APP = """
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

app = APIGatewayHttpResolver()

@app.get("/hello/<name>")
def hello(name: str):
    return {"hello": name, "q": app.current_event.get_query_string_value("q"),
            "route": app.current_event.route_key,
            "ip": app.current_event.request_context.http.source_ip}

@app.post("/echo")
def echo():
    return Response(status_code=202, content_type="text/plain",
                    body=app.current_event.decoded_body.upper())

def handler(event, context):
    return app.resolve(event, context)
"""


def _imported_packages(*modules: str) -> list[str]:
    """Top-level site-packages modules that importing `modules` loads (with dependencies)."""
    script = (
        "import sys, sysconfig, json\n"
        + "".join(f"import {m}\n" for m in modules)
        + "sp = sysconfig.get_paths()['purelib']\n"
        "print(json.dumps(sorted({n.split('.')[0] for n, m in list(sys.modules.items())"
        " if (getattr(m, '__file__', None) or '').startswith(sp)})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    return [name for name in json.loads(out.stdout) if name not in _NOT_PACKAGED]


def _package_zip(app_source: str, *modules: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app.py", app_source)
        for name in _imported_packages(*modules):
            spec = importlib.util.find_spec(name)
            assert spec is not None, name
            if spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    root = Path(location)
                    for path in root.rglob("*"):
                        if path.is_file() and "__pycache__" not in path.parts:
                            archive.write(path, f"{name}/{path.relative_to(root)}")
            elif spec.origin:
                archive.write(spec.origin, Path(spec.origin).name)
    return buffer.getvalue()


def test_mangum_fastapi_app_behind_a_proxy_route(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    code = _package_zip(FASTAPI_APP, "fastapi", "mangum", "pydantic")
    deploy("fastapi-app", zip_bytes=code, memory_mb=512, timeout_s=30)
    admin.add_route("ANY /{proxy+}", "fastapi-app")

    got = http.get("/items/42?q=search", headers={"X-Trace": "t-1"})
    assert got.status_code == 200, got.text
    assert got.json() == {"item_id": 42, "q": "search", "trace": "t-1"}
    created = http.post("/items", json={"name": "tea", "price": 2.5})
    assert created.status_code == 201
    assert created.json() == {"created": "tea", "price": 2.5}
    invalid = http.post(
        "/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert invalid.status_code == 422  # FastAPI saw the bytes as sent and refused them itself
    missing = http.get("/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    cookies = http.get("/cookie", headers={"Cookie": "session=abc"})
    assert cookies.json() == {"seen": "abc"}
    assert sorted(c.split(";")[0] for c in cookies.headers.get_list("set-cookie")) == [
        "flavour=oat",
        "size=large",
    ]


def test_powertools_http_resolver(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    code = _package_zip(POWERTOOLS_APP, "aws_lambda_powertools.event_handler")
    deploy("powertools-app", zip_bytes=code, memory_mb=256, timeout_s=30)
    admin.add_route("GET /hello/{name}", "powertools-app")
    admin.add_route("POST /echo", "powertools-app")

    got = http.get("/hello/gureum?q=1")
    assert got.status_code == 200, got.text
    assert got.json() == {
        "hello": "gureum",
        "q": "1",
        "route": "GET /hello/{name}",
        "ip": "127.0.0.1",
    }
    echoed = http.post("/echo", content=b"shout", headers={"content-type": "text/plain"})
    assert (echoed.status_code, echoed.text) == (202, "SHOUT")
    assert echoed.headers["content-type"] == "text/plain"
