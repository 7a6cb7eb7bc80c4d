"""The `gureum` command against a real server: in process through Typer's CliRunner, and as the
installed console script in subprocesses (including `gureum up` itself)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from gureum.cli.bundle import zip_directory
from gureum.cli.main import app
from gureum.errors import InvalidParameterValue
from tests.conftest import RunningServer, free_port

GREET = """
import os
def handler(event, context):
    print("greeting", event.get("name"))
    return {"greeting": os.environ.get("GREETING", "hello") + " " + str(event.get("name")),
            "version": context.function_version, "code": "v1"}
"""
FAIL = """
def handler(event, context):
    print("about to fail")
    raise ValueError("boom: " + str(event.get("why")))
"""


class Cli:
    """Runs `gureum` in process with a fixed environment."""

    def __init__(self, env: dict[str, str | None]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(app, list(args), env=self.env, input=input)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)


def cli_env(server: RunningServer, tmp_path: Path, **changes: str | None) -> dict[str, str | None]:
    root = server.platform.root
    env: dict[str, str | None] = {
        "GUREUM_ENDPOINT": server.endpoint,
        "AWS_ENDPOINT_URL": None,
        "AWS_ACCESS_KEY_ID": root.access_key_id,
        "AWS_SECRET_ACCESS_KEY": root.secret_access_key,
        "AWS_SESSION_TOKEN": None,
        # an empty data dir: nothing may come from ~/.gureum
        "GUREUM_DATA_DIR": str(tmp_path / "cli-home"),
    }
    env.update(changes)
    return env


@pytest.fixture
def cli(server: RunningServer, tmp_path: Path) -> Cli:
    return Cli(cli_env(server, tmp_path))


def write_function(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


def deploy(cli: Cli, tmp_path: Path, name: str, source: str) -> None:
    """Deploy `source` as app.py with handler app.handler."""
    cli.ok(
        "deploy",
        name,
        str(write_function(tmp_path / name, {"app.py": source})),
        "--handler",
        "app.handler",
    )


def wait_until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def gureum_command() -> list[str]:
    script = shutil.which("gureum")
    return [script] if script else [sys.executable, "-m", "gureum"]


def clean_environ(**changes: str) -> dict[str, str]:
    """This process's environment without anything that would point the CLI elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUREUM_", "AWS_", "COLUMNS"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(changes)
    return env


class Process:
    """A subprocess whose stdout and stderr are collected by threads as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)

    def wait_for_output(self, text: str, timeout: float = 30.0) -> str:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.out:
                raise AssertionError(f"exited {self.popen.returncode}:\n{self.out}\n{self.err}")
            return text in self.out

        wait_until(seen, timeout)
        return self.out

    def stop(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        """Kill the process if it still runs, then collect its output and close the pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], dict[str, str]], Process]]:
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str]) -> Process:
        process = Process(args, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


# ---- the whole life of a function ----------------------------------------------------------------


def test_deploy_invoke_publish_alias_observe_remove(cli: Cli, tmp_path: Path, lam: Any) -> None:
    code = write_function(tmp_path / "greet", {"app.py": GREET})
    deployed = cli.json(
        "deploy",
        "greet",
        str(code),
        "--handler",
        "app.handler",
        "--memory",
        "256",
        "--timeout",
        "5",
        "--env",
        "GREETING=hi",
        "--description",
        "says hi",
    )
    assert deployed["action"] == "created"
    config = deployed["function"]
    assert (config["FunctionName"], config["Handler"], config["Runtime"]) == (
        "greet",
        "app.handler",
        "python3.11",
    )
    assert (config["MemorySize"], config["Timeout"], config["Description"]) == (256, 5, "says hi")
    assert config["Environment"]["Variables"] == {"GREETING": "hi"}

    invoked = cli.ok("invoke", "greet", "--payload", '{"name": "ada"}')
    assert json.loads(invoked.stdout) == {"greeting": "hi ada", "version": "$LATEST", "code": "v1"}

    listed = cli.json("ls")
    assert [f["FunctionName"] for f in listed] == ["greet"]
    assert "greet" in cli.ok("ls").stdout

    assert cli.json("publish", "greet", "--description", "first")["Version"] == "1"
    (code / "app.py").write_text(GREET.replace('"v1"', '"v2"'))
    assert cli.json("deploy", "greet", str(code), "--handler", "app.handler")["action"] == "updated"
    assert cli.ok("publish", "greet").stdout.strip() == "published greet version 2"
    assert [v["Version"] for v in cli.json("versions", "greet")] == ["$LATEST", "1", "2"]

    alias = cli.json("alias", "greet", "live", "1", "--weight", "2=0.5")
    assert alias["FunctionVersion"] == "1"
    assert alias["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.5}}
    executed = {cli.json("invoke", "greet:live")["executed_version"] for _ in range(24)}
    assert executed == {"1", "2"}  # both sides of the split get traffic (p(miss) = 2**-23)
    human = cli.ok("alias", "greet", "live", "2", "--description", "all in").stdout
    assert "updated alias greet:live -> version 2" in human
    aliases = cli.json("alias-ls", "greet")
    assert [(a["Name"], a["FunctionVersion"], a["Description"]) for a in aliases] == [
        ("live", "2", "all in")
    ]
    assert "RoutingConfig" not in aliases[0]  # setting an alias sets exactly the given weights
    assert json.loads(cli.ok("invoke", "greet:live").stdout)["code"] == "v2"

    records = cli.json("invocations", "greet", "--limit", "100")
    assert len(records) == 26
    assert {r["status"] for r in records} == {"success"}
    assert {r["version"] for r in records} == {"$LATEST", "1", "2"}
    newest = records[0]
    assert newest["billed_ms"] >= 1 and newest["trigger"] == "sync"
    table = cli.ok("invocations", "greet").stdout
    assert newest["request_id"] in table and "billed ms" in table

    logs = cli.ok("logs", "greet", "--limit", "100").stdout
    for marker in ("START RequestId:", "END RequestId:", "REPORT RequestId:", "greeting ada"):
        assert marker in logs
    one = cli.json("logs", "greet", "--request-id", newest["request_id"])
    assert [entry["request_id"] for entry in one] == [newest["request_id"]]
    assert f"START RequestId: {newest['request_id']}" in one[0]["log"]

    cli.ok("alias-rm", "greet", "live")
    assert cli.json("alias-ls", "greet") == []
    assert cli.ok("rm", "greet:1").stdout.strip() == "deleted greet version 1"
    assert [v["Version"] for v in cli.json("versions", "greet")] == ["$LATEST", "2"]
    assert cli.json("rm", "greet") == {"deleted": "greet", "version": None}
    assert cli.json("ls") == []
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="greet")


def test_deploy_updates_code_then_configuration(cli: Cli, tmp_path: Path, lam: Any) -> None:
    code = write_function(
        tmp_path / "fn",
        {"app.py": GREET, "other.py": GREET.replace("handler", "main").replace('"v1"', '"o"')},
    )
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"stale")
    first = cli.json("deploy", "fn", str(code), "--handler", "app.handler", "--env", "GREETING=yo")
    assert first["action"] == "created"
    assert cli.json("invoke", "fn", "--payload", '{"name": 1}')["payload"]["code"] == "v1"

    (code / "other.py").write_text(GREET.replace("handler", "main").replace('"v1"', '"v2"'))
    second = cli.json(
        "deploy", "fn", str(code), "--handler", "other.main", "--memory", "512", "--publish"
    )
    assert second["action"] == "updated"
    assert second["function"]["Version"] == "1"  # --publish on update publishes the result
    latest = lam.get_function_configuration(FunctionName="fn")
    assert (latest["Handler"], latest["MemorySize"]) == ("other.main", 512)
    assert latest["Environment"]["Variables"] == {"GREETING": "yo"}  # untouched without --env
    assert latest["CodeSha256"] != first["function"]["CodeSha256"]
    result = cli.json("invoke", "fn:1", "--payload", '{"name": 2}')
    assert result["payload"] == {"greeting": "yo 2", "version": "1", "code": "v2"}
    assert result["executed_version"] == "1"

    # the same directory deploys to the same bytes, so the code hash does not move
    again = cli.json("deploy", "fn", str(code), "--handler", "other.main")
    assert again["function"]["CodeSha256"] == latest["CodeSha256"]
    human = cli.ok("deploy", "fn", str(code), "--handler", "other.main").stdout
    assert human.startswith("updated fn (") and "gureum invoke fn" in human


def test_deploy_warns_when_the_handler_module_is_missing(cli: Cli, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", {"app.py": GREET})
    result = cli.ok("deploy", "fn", str(code), "--handler", "nothere.handler")
    assert "no module 'nothere'" in result.stderr
    assert "created fn" in result.stdout


def test_invoke_async_is_delivered(cli: Cli, tmp_path: Path) -> None:
    deploy(cli, tmp_path, "greet", GREET)
    queued = cli.json("invoke", "greet", "--async", "--payload", '{"name": "later"}')
    assert queued["status"] == 202 and queued["payload"] is None
    request_id = queued["request_id"]

    def delivered() -> bool:
        found = {e["request_id"]: e for e in cli.json("events")}
        return found.get(request_id, {}).get("state") == "succeeded"

    wait_until(delivered)
    succeeded = cli.json("events", "--state", "succeeded")
    assert [e["request_id"] for e in succeeded] == [request_id]
    assert cli.json("events", "--state", "failed") == []
    assert request_id in cli.ok("events").stdout
    logs = cli.json("logs", "greet", "--request-id", request_id)
    assert "greeting later" in logs[0]["log"]
    human = cli.ok("invoke", "greet", "--async").stdout
    assert human.startswith("queued ")


def test_function_error_exits_1_and_shows_the_error(cli: Cli, tmp_path: Path) -> None:
    deploy(cli, tmp_path, "bad", FAIL)
    result = cli("invoke", "bad", "--payload", '{"why": "testing"}', "--log")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: ValueError: boom: testing" in result.stderr
    assert "START RequestId:" in result.stderr and "about to fail" in result.stderr  # --log
    as_json = cli("invoke", "bad", "--json")
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["function_error"] == "Unhandled"
    assert document["payload"]["errorType"] == "ValueError"
    assert {r["status"] for r in cli.json("invocations", "bad")} == {"error"}


def test_invoke_reads_payload_from_file_and_stdin(cli: Cli, tmp_path: Path) -> None:
    deploy(cli, tmp_path, "greet", GREET)
    event = tmp_path / "event.json"
    event.write_text('{"name": "file"}')
    from_file = cli.json("invoke", "greet", "--payload", f"@{event}")
    assert from_file["payload"]["greeting"] == "hello file"
    from_stdin = cli("invoke", "greet", "--payload", "-", "--json", input='{"name": "pipe"}')
    assert json.loads(from_stdin.stdout)["payload"]["greeting"] == "hello pipe"
    missing = cli("invoke", "greet", "--payload", f"@{tmp_path / 'nope.json'}")
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_invalid_payload_is_refused_before_invoking(cli: Cli, tmp_path: Path) -> None:
    deploy(cli, tmp_path, "greet", GREET)
    result = cli("invoke", "greet", "--payload", '{"name": ')
    assert result.exit_code == 1
    assert result.stderr.startswith("error: InvalidRequestContentException: --payload is not valid")
    assert result.stdout == ""
    assert cli.json("invocations", "greet") == []  # nothing reached the function


def test_unknown_function_is_resource_not_found(cli: Cli) -> None:
    for args in (["invoke", "nope"], ["rm", "nope"], ["logs", "nope"], ["publish", "nope"]):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error: ResourceNotFoundException: "), result.stderr
        assert "nope" in result.stderr


def test_wrong_credentials_are_refused(server: RunningServer, tmp_path: Path) -> None:
    wrong_secret = Cli(cli_env(server, tmp_path, AWS_SECRET_ACCESS_KEY="not-the-secret"))
    result = wrong_secret("ls")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: InvalidSignatureException: The request signature")
    unknown_key = Cli(cli_env(server, tmp_path, AWS_ACCESS_KEY_ID="AKIANOBODY"))
    result = unknown_key("whoami")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UnrecognizedClientException: ")


def test_server_down_says_so_and_how_to_start_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    cli = Cli(
        {
            "GUREUM_ENDPOINT": endpoint,
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "secret-example",
            "GUREUM_DATA_DIR": str(tmp_path),
        }
    )
    result = cli("ls")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: EndpointUnreachable: cannot reach Gureum at {endpoint}"
    )
    assert "gureum up" in result.stderr
    assert "Traceback" not in result.output


def test_missing_credentials_are_a_clear_error(tmp_path: Path) -> None:
    cli = Cli(
        {
            "GUREUM_ENDPOINT": None,
            "AWS_ACCESS_KEY_ID": None,
            "AWS_SECRET_ACCESS_KEY": None,
            "GUREUM_DATA_DIR": str(tmp_path / "empty"),
        }
    )
    result = cli("ls")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ConfigurationError: no credentials")


def test_usage_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    code = write_function(tmp_path / "g", {"app.py": GREET})
    cases = [
        ["deploy", "greet", str(tmp_path / "missing"), "--handler", "app.handler"],
        ["deploy", "greet", str(code)],  # --handler is required
        ["deploy", "greet", str(code), "--handler", "app.handler", "--env", "NOEQUALS"],
        ["invoke"],
        ["invoke", "greet:"],
        ["alias", "greet", "live", "1", "--weight", "2=lots"],
        ["scale", "greet", "--reserved", "1", "--unreserved"],
        ["events", "--state", "sleeping"],
        ["nonsense"],
    ]
    for args in cases:
        assert cli(*args).exit_code == 2, args
    assert cli.json("ls") == []  # none of them did anything


def test_scale_and_json_outputs(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    deploy(cli, tmp_path, "greet", GREET)
    assert cli.json("scale", "greet", "--min-instances", "1", "--reserved", "3") == {
        "min_instances": 1,
        "reserved_concurrency": 3,
    }
    wait_until(lambda: server.platform.pool.instance_count >= 1)  # kept warm without a request
    assert cli.json("scale", "greet") == {"min_instances": 1, "reserved_concurrency": 3}
    assert cli.json("scale", "greet", "--unreserved", "--min-instances", "0") == {
        "min_instances": 0,
        "reserved_concurrency": None,
    }
    assert "reserved concurrency none" in cli.ok("scale", "greet").stdout

    me = cli.json("whoami")
    root = server.platform.root
    assert (me["account_id"], me["principal"], me["access_key_id"]) == (
        root.account_id,
        "root",
        root.access_key_id,
    )
    assert me["endpoint"] == server.endpoint
    assert root.account_id in cli.ok("whoami").stdout

    report = cli.json("doctor")
    assert report["isolation"] in ("full", "partial") and report["checks"]
    human = cli.ok("doctor").stdout
    assert f"isolation: {report['isolation']}" in human
    for check in report["checks"]:
        assert f"{'✓' if check['ok'] else '✗'} {check['name']}" in human


# ---- the installed command -------------------------------------------------------------------


def test_console_script_runs_against_the_server(server: RunningServer, tmp_path: Path) -> None:
    root = server.platform.root
    env = clean_environ(
        GUREUM_ENDPOINT=server.endpoint,
        AWS_ACCESS_KEY_ID=root.access_key_id,
        AWS_SECRET_ACCESS_KEY=root.secret_access_key,
        GUREUM_DATA_DIR=str(tmp_path / "home"),
    )
    code = write_function(tmp_path / "g", {"app.py": GREET})
    command = gureum_command()
    run = subprocess.run(
        [*command, "deploy", "greet", str(code), "--handler", "app.handler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        [*command, "invoke", "greet", "--payload", '{"name": "proc"}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["greeting"] == "hello proc"
    module = subprocess.run(
        [sys.executable, "-m", "gureum", "ls", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0, module.stderr
    assert [f["FunctionName"] for f in json.loads(module.stdout)] == ["greet"]


def test_logs_follow_streams_new_invocations(
    server: RunningServer, cli: Cli, tmp_path: Path, processes: Any
) -> None:
    deploy(cli, tmp_path, "greet", GREET)
    before = cli.json("invoke", "greet", "--payload", '{"name": "before"}')["request_id"]
    root = server.platform.root
    env = clean_environ(
        GUREUM_ENDPOINT=server.endpoint,
        AWS_ACCESS_KEY_ID=root.access_key_id,
        AWS_SECRET_ACCESS_KEY=root.secret_access_key,
    )
    follower = processes([*gureum_command(), "logs", "greet", "--follow"], env)
    follower.wait_for_output(f"END RequestId: {before}")
    after = [cli.json("invoke", "greet", "--payload", f'{{"name": "n{i}"}}') for i in range(3)]
    for invoked in after:
        follower.wait_for_output(f"REPORT RequestId: {invoked['request_id']}")
    assert follower.stop(signal.SIGINT) == 0
    out = follower.out
    assert out.count(f"START RequestId: {before}") == 1  # each entry printed once
    assert [out.index(i["request_id"]) for i in after] == sorted(
        out.index(i["request_id"]) for i in after
    )


def test_up_serves_prints_how_to_use_it_and_stops_cleanly(tmp_path: Path, processes: Any) -> None:
    data_dir = tmp_path / "state"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"

    def up(port: int) -> list[str]:
        return [*gureum_command(), "up", "--port", str(port), "--data-dir", str(data_dir), "--demo"]

    server = processes(up(port), clean_environ())
    banner = server.wait_for_output("Press Ctrl-C to stop.", timeout=60)
    assert httpx.get(f"{endpoint}/healthz").json() == {"status": "ok"}
    stored = json.loads((data_dir / "root-credentials.json").read_text())
    assert (data_dir / "endpoint").read_text().strip() == endpoint
    assert f"Gureum is up at {endpoint}" in banner
    assert f"export AWS_ACCESS_KEY_ID={stored['access_key_id']}" in banner
    assert f"export AWS_SECRET_ACCESS_KEY={stored['secret_access_key']}" in banner
    assert f"export GUREUM_DATA_DIR={data_dir}" in banner
    assert """gureum invoke hello --payload '{"name": "you"}'""" in banner
    assert f"aws lambda invoke --endpoint-url {endpoint} " in banner

    # the CLI finds endpoint and credentials through the data dir alone
    client_env = clean_environ(GUREUM_DATA_DIR=str(data_dir))
    invoked = subprocess.run(
        [*gureum_command(), "invoke", "hello", "--payload", '{"name": "you"}', "--json"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert invoked.returncode == 0, invoked.stderr
    document = json.loads(invoked.stdout)
    assert document["payload"]["message"] == "Hello, you! Greetings from Gureum."
    assert document["payload"]["request_id"] == document["request_id"]

    # a second server cannot take the data dir, and leaves the first one findable
    rival = processes(up(free_port()), clean_environ())
    assert rival.popen.wait(60) == 1
    rival.close()
    assert "error: ConfigurationError: Gureum did not start" in rival.err
    assert (data_dir / "endpoint").read_text().strip() == endpoint
    assert server.stop(signal.SIGTERM) == 0
    assert "Application shutdown complete" in server.err

    again = processes(up(port), clean_environ())
    banner = again.wait_for_output("Press Ctrl-C to stop.", timeout=60)
    assert stored["secret_access_key"] not in banner + again.err
    assert f"access key {stored['access_key_id']}, stored in {data_dir}" in banner
    assert "Demo function `hello` is deployed." in banner  # deploying again is harmless
    assert again.stop(signal.SIGINT) == 0


def test_up_refuses_a_port_in_use(server: RunningServer, tmp_path: Path) -> None:
    cli = Cli({"GUREUM_DATA_DIR": None, "GUREUM_PORT": None, "GUREUM_HOST": None})
    busy = str(server.settings.port)
    result = cli("up", "--port", busy, "--data-dir", str(tmp_path / "other"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: ConfigurationError: port {busy} on 127.0.0.1 is")
    assert "already in use" in result.stderr
    assert not (tmp_path / "other" / "root-credentials.json").exists()


def test_up_reports_bad_settings(tmp_path: Path) -> None:
    cli = Cli({"GUREUM_PORT": "not-a-port", "GUREUM_DATA_DIR": str(tmp_path)})
    result = cli("up")
    assert result.exit_code == 1
    assert (
        result.stderr
        == "error: ConfigurationError: GUREUM_PORT must be an integer, got 'not-a-port'\n"
    )


def test_zip_directory_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", {"b.py": "B", "a/x.py": "X", "run.sh": "#!/bin/sh"})
    (code / "run.sh").chmod(0o755)
    for junk in ("__pycache__/a.pyc", ".git/config", "a/__pycache__/x.pyc"):
        (code / junk).parent.mkdir(parents=True, exist_ok=True)
        (code / junk).write_text("junk")
    first = zip_directory(code)
    os.utime(code / "b.py", (1, 1))
    assert zip_directory(code) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.namelist() == ["a/x.py", "b.py", "run.sh"]
        assert archive.getinfo("run.sh").external_attr >> 16 & 0o777 == 0o755
        assert archive.getinfo("b.py").external_attr >> 16 & 0o777 == 0o644
    empty = tmp_path / "empty"
    (empty / "__pycache__").mkdir(parents=True)
    with pytest.raises(InvalidParameterValue, match="no files"):
        zip_directory(empty)
