"""Flows through a real server and worker over REST: applies (one, bulk, atomic, unchanged),
DAG semantics with parameters and result passing, retry, a kill -9 in the middle of a run and
just after a cancel, and a per-second schedule across a restart. Each shell job appends a line
to a marker file, so that a job that ran twice shows."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration_support import (
    ServerProcess,
    WorkerProcess,
    run_corral,
    wait_for,
    wait_for_workers,
)

import corral
from corral.constants import MAX_BULK_RUNS
from corral.flow_models import FlowRunInfo
from corral.server.flows.runs import FlowRunState

WAIT = 30.0


def rest(server: ServerProcess) -> httpx.Client:
    """A client of the server's REST API with its admin token."""
    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=WAIT, trust_env=False)


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with rest(server) as http:
        yield http


def marked(name: str, markers: Path, *depends_on: str, **more: Any) -> dict[str, Any]:
    """A shell job that appends to markers/NAME (and runs `then` after)."""
    then = more.pop("then", "true")
    command = f"echo ran >> {markers / name} && {then}"
    return {"name": name, "shell": command, "depends_on": list(depends_on), **more}


def runs_of(markers: Path, name: str) -> int:
    path = markers / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def ended(api: httpx.Client, run_id: str, timeout: float = WAIT) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(api.get(f"/api/v1/flow-runs/{run_id}").raise_for_status().json())
        return found["state"] != "running"

    wait_for(done, timeout, f"run {run_id} to end")
    return found


def states(run: dict[str, Any]) -> dict[str, str]:
    return {job["name"]: job["state"] for job in run["jobs"]}


def test_put_is_idempotent_and_versions_only_changes(api: httpx.Client) -> None:
    flow = {"jobs": [{"name": "a", "shell": "true"}]}
    first = api.put("/api/v1/flows/etl", json=flow).raise_for_status().json()
    again = api.put("/api/v1/flows/etl", json=flow).raise_for_status().json()
    flow["jobs"].append({"name": "b", "shell": "true", "depends_on": ["a"]})
    changed = api.put("/api/v1/flows/etl", json=flow).raise_for_status().json()
    assert [(a["outcome"], a["version"]) for a in (first, again, changed)] == [
        ("created", 1),
        ("unchanged", 1),
        ("changed", 2),
    ]
    versions = api.get("/api/v1/flows/etl/versions").raise_for_status().json()
    assert [version["version"] for version in versions] == [2, 1]
    shown = api.get("/api/v1/flows/etl").raise_for_status().json()
    assert [job["name"] for job in shown["definition"]["jobs"]] == ["a", "b"]
    assert api.get("/api/v1/flows/nope").status_code == 404
    assert api.get("/api/v1/flow-runs/nope").status_code == 404
    assert api.post("/api/v1/flows/nope/runs", json={}).status_code == 404
    bad = api.put(
        "/api/v1/flows/loop", json={"jobs": [{"name": "a", "shell": "true", "depends_on": ["a"]}]}
    )
    assert bad.status_code == 422 and bad.json()["flow"] == "loop" and bad.json()["problems"]
    assert api.delete("/api/v1/flows/etl").raise_for_status().json()["status"] == "deleted"
    assert api.get("/api/v1/flows/etl").status_code == 404


def test_a_bulk_apply_is_all_or_nothing_and_ten_thousand_flows_apply_at_once(
    api: httpx.Client,
) -> None:
    flows = [{"name": f"f{i:05}", "jobs": [{"name": "a", "shell": "true"}]} for i in range(100)]
    flows[42]["jobs"][0]["timeout"] = -1
    refused = api.post("/api/v1/flows", json=flows)
    assert refused.status_code == 422
    assert refused.json()["flow"] == "f00042" and "timeout" in refused.json()["detail"]
    assert api.get("/api/v1/flows").raise_for_status().json() == []
    many = [{"name": f"f{i:05}", "jobs": [{"name": "a", "shell": "true"}]} for i in range(10_000)]
    applied = api.post("/api/v1/flows", json=many).raise_for_status().json()
    assert {a["outcome"] for a in applied} == {"created"} and len(applied) == 10_000
    page = api.get("/api/v1/flows", params={"after": "f09989", "limit": 100}).json()
    assert [flow["name"] for flow in page] == [f"f{i:05}" for i in range(9990, 10_000)]
    again = api.post("/api/v1/flows", json=many).raise_for_status().json()
    assert {a["outcome"] for a in again} == {"unchanged"}


def test_a_bulk_start_is_all_or_nothing_and_a_thousand_runs_start_at_once(
    api: httpx.Client, server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    flows = [{"name": f"r{i:04}", "jobs": [{"name": "a", "shell": "true"}]} for i in range(1000)]
    flows[7]["parameters"] = {"n": {"type": "int"}}
    api.post("/api/v1/flows", json=flows).raise_for_status()
    runs = [{"flow": flow["name"]} for flow in flows]
    runs[7]["parameters"] = {"n": 3}

    def refused(index: int, **run: Any) -> httpx.Response:
        answer = api.post("/api/v1/flow-runs", json=[*runs[:index], run, *runs[index:]])
        assert api.get("/api/v1/flows/r0000/runs").json() == [], "a refused start stored runs"
        return answer

    unknown = refused(500, flow="nope")
    assert unknown.status_code == 404 and "runs[500]: no flow 'nope'" in unknown.json()["detail"]
    wrong = refused(3, flow="r0007", parameters={"n": "three"})
    assert wrong.status_code == 422 and wrong.json()["flow"] == "r0007"
    assert wrong.json()["problems"] == ["runs[3]: parameter 'n': 'three' is a str, not an int"]
    missing = refused(999, flow="r0007")
    assert missing.status_code == 422 and "'n' has no default" in missing.json()["detail"]
    too_many = api.post("/api/v1/flow-runs", json=[{"flow": "r0000"}] * (MAX_BULK_RUNS + 1))
    assert too_many.status_code == 422
    assert api.get("/api/v1/flows/r0000/runs").json() == []

    start_worker(server, "--concurrency", "8")
    wait_for_workers(server)
    started = api.post("/api/v1/flow-runs", json=runs)
    assert started.status_code == 201
    answers = started.json()
    assert [run["flow"] for run in answers] == [flow["name"] for flow in flows]
    assert answers[7]["parameters"] == {"n": 3}
    assert {run["state"] for run in answers} == {"running"}
    assert all(run["jobs"][0]["name"] == "a" for run in answers)
    for run in answers[::100]:
        assert ended(api, run["id"])["state"] == "succeeded"
    shown = api.get(f"/api/v1/flow-runs/{answers[7]['id']}").raise_for_status()
    assert shown.headers["content-type"] == "application/json"
    info = FlowRunInfo.model_validate_json(shown.content)
    assert info.model_dump(mode="json") == shown.json()
    assert (info.parameters, info.state, info.jobs[0].state) == ({"n": 3}, "succeeded", "succeeded")


def test_the_python_client_starts_many_runs_in_one_call(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker(server)
    wait_for_workers(server)
    with server.connect() as client:
        client.flows.apply(
            corral.Flow("plain").job("a", shell="true"),
            corral.Flow("typed", parameters={"n": {"type": "int", "default": 1}})
            .job("a", shell=f"echo ${{n}} >> {tmp_path / 'typed'}")
            .job("b", shell="true", depends_on=["a"]),
        )
        started = client.flows.run_many(
            "plain",
            [{"flow": "typed", "parameters": {"n": 2}}, {"flow": "typed", "disable": ["b"]}],
        )
        assert [run.info.flow for run in started] == ["plain", "typed", "typed"]
        assert [run.wait(timeout=WAIT) for run in started] == [FlowRunState.SUCCEEDED] * 3
        assert started[2].jobs["b"].state == "skipped"
        assert sorted((tmp_path / "typed").read_text().split()) == ["1", "2"]
        with pytest.raises(corral.NotFound, match=r"runs\[1\]: no flow 'nope'"):
            client.flows.run_many("plain", "nope")
        with pytest.raises(corral.InvalidRequest, match=r"runs\[0\]: parameter 'n'"):
            client.flows.run_many({"flow": "typed", "parameters": {"n": "x"}}, "plain")
        assert len(client.flows.runs("plain")) == 1
        assert client.flows.run_many() == []


def test_a_diamond_with_parameters_results_a_failure_handler_and_a_retry(
    api: httpx.Client,
    server: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    start_worker(server, "--concurrency", "4")
    wait_for_workers(server)
    flag = tmp_path / "fail"
    flag.touch()
    flow = {
        "parameters": {"n": {"type": "int", "default": 3}},
        "jobs": [
            {"name": "square", "python": "corral_test_tasks:square", "args": ["${n}"]},
            {
                "name": "add",
                "python": "corral_test_tasks:add",
                "args": ["${jobs.square.result}", 1],
                "depends_on": ["square"],
            },
            marked("left", tmp_path, "square", then=f"test ! -e {flag}"),
            marked("join", tmp_path, "add", "left"),
            marked("alert", tmp_path, "left", trigger="one_failed"),
        ],
    }
    api.put("/api/v1/flows/diamond", json=flow).raise_for_status()
    started = api.post("/api/v1/flows/diamond/runs", json={"parameters": {"n": 5}})
    run = ended(api, started.raise_for_status().json()["id"])
    assert run["state"] == "failed"
    assert states(run) == {
        "square": "succeeded",
        "add": "succeeded",
        "left": "failed",
        "join": "upstream_failed",
        "alert": "succeeded",
    }
    add = next(job for job in run["jobs"] if job["name"] == "add")
    assert api.get(f"/api/v1/jobs/{add['job_id']}").json()["result"] == 26
    dry = api.post(f"/api/v1/flow-runs/{run['id']}/retry", json={"dry_run": True}).json()
    assert dry["rerun"] == ["left", "join"]
    flag.unlink()
    api.post(f"/api/v1/flow-runs/{run['id']}/retry", json={}).raise_for_status()
    again = ended(api, run["id"])
    assert again["state"] == "succeeded"
    assert (runs_of(tmp_path, "left"), runs_of(tmp_path, "join"), runs_of(tmp_path, "alert")) == (
        2,
        1,
        1,
    )
    wrong = api.post("/api/v1/flows/diamond/runs", json={"parameters": {"n": "five"}})
    assert wrong.status_code == 422 and "'n'" in wrong.json()["detail"]


def test_a_run_resumes_after_kill_9_and_no_succeeded_job_runs_twice(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "5")
    start_worker(server)
    wait_for_workers(server)
    flow = {
        "jobs": [
            marked("first", tmp_path),
            marked("slow", tmp_path, "first", then="sleep 2"),
            marked("fan1", tmp_path, "slow"),
            marked("fan2", tmp_path, "slow"),
            marked("last", tmp_path, "fan1", "fan2"),
        ]
    }
    with rest(server) as api:
        api.put("/api/v1/flows/chain", json=flow).raise_for_status()
        run_id = api.post("/api/v1/flows/chain/runs", json={}).raise_for_status().json()["id"]
        wait_for(lambda: runs_of(tmp_path, "slow") == 1, WAIT, "the slow job to start")
    server.kill()
    server.restart()
    with rest(server) as api:
        run = ended(api, run_id, timeout=60)
    assert run["state"] == "succeeded", run
    assert {name: runs_of(tmp_path, name) for name in states(run)} == dict.fromkeys(
        ["first", "slow", "fan1", "fan2", "last"], 1
    )


def test_a_per_second_schedule_gives_each_due_time_one_run_across_a_restart(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    server = start_server("--lease", "5")
    start_worker(server, "--concurrency", "4")
    flow = {
        "jobs": [{"name": "a", "shell": "true"}],
        "max_active_runs": 20,
        "schedule": {"cron": "*/1 * * * * *", "overlap": "allow_all"},
    }
    with rest(server) as api:
        api.put("/api/v1/flows/tick", json=flow).raise_for_status()
        shown = api.get("/api/v1/flows/tick").json()
        assert len(shown["next_times"]) == 5
        wait_for(lambda: len(api.get("/api/v1/flows/tick/runs").json()) >= 2, WAIT, "runs")
    server.kill()
    time.sleep(2)  # due times pass while it is down: they are on time (within the grace)
    server.restart()
    with rest(server) as api:
        wait_for(lambda: len(api.get("/api/v1/flows/tick/runs").json()) >= 6, WAIT, "runs")
        api.post("/api/v1/flows/tick/pause").raise_for_status()
        runs = api.get("/api/v1/flows/tick/runs", params={"limit": 1000}).json()
    due = sorted(run["due"] for run in runs)
    assert len(due) == len(set(due)), "a due time got two runs"
    assert due == [due[0] + second for second in range(len(due))], "a due time was missed"


def test_the_cli_applies_runs_and_inspects_flows(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    start_worker(server, "--concurrency", "2")
    wait_for_workers(server)
    many = "".join(
        f"---\nname: bulk{i:05}\njobs:\n  - name: a\n    shell: 'true'\n" for i in range(10_000)
    )
    (tmp_path / "many.yaml").write_text(many)
    applied = run_corral("flow", "apply", str(tmp_path / "many.yaml"), env=env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count(" created (version 1)") == 10_000
    again = run_corral("flow", "apply", str(tmp_path / "many.yaml"), env=env)
    assert again.stdout.count(" unchanged (version 1)") == 10_000
    flow = f"""
name: greet
parameters:
  who: {{type: str}}
  times: {{type: int, default: 1}}
schedule: {{cron: "0 6 * * *", timezone: Europe/Berlin}}
jobs:
  - name: hello
    shell: echo hello ${{who}} ${{times}} >> {tmp_path / "hello"}
  - name: bye
    shell: echo bye >> {tmp_path / "bye"}
    depends_on: [hello]
"""
    (tmp_path / "greet.yaml").write_text(flow)
    assert run_corral("flow", "apply", str(tmp_path / "greet.yaml"), env=env).returncode == 0
    shown = run_corral("flow", "show", "greet", env=env)
    assert shown.stdout.count("next:") == 5 and "Europe/Berlin" in shown.stdout
    exported = run_corral("flow", "get", "greet", "-o", "yaml", env=env).stdout
    (tmp_path / "exported.yaml").write_text(exported)
    same = run_corral("flow", "apply", str(tmp_path / "exported.yaml"), env=env)
    assert "flow/greet unchanged (version 1)" in same.stdout
    ran = run_corral("flow", "run", "greet", "-p", "who=world", "-p", "times=2", "--wait", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (
        "hello: succeeded" in ran.stdout and (tmp_path / "hello").read_text() == "hello world 2\n"
    )
    skipped = run_corral(
        "flow", "run", "greet", "-p", "who=x", "--disable", "bye", "--wait", env=env
    )
    assert skipped.returncode == 0 and "bye: skipped" in skipped.stdout
    bad_type = run_corral("flow", "run", "greet", "-p", "who=x", "-p", "times=many", env=env)
    assert bad_type.returncode == 6 and "times" in bad_type.stderr
    listed = run_corral("flow", "runs", "greet", env=env).stdout.splitlines()
    assert len(listed) == 3 and all("succeeded" in line for line in listed[1:])
    # Each flow with its newest run: the state a test engineer checks across thousands.
    flows = run_corral("flow", "list", "--after", "bulk09998", env=env).stdout.splitlines()
    assert flows[0].split("\t") == ["name", "version", "schedule", "paused", "last run", "started"]
    assert flows[1].split("\t")[:5] == ["bulk09999", "1", "-", "-", "-"]
    assert flows[2].split("\t")[:5] == ["greet", "1", "0 6 * * *", "-", "succeeded"]
    run_id = listed[1].split("\t")[0]
    status = run_corral("flow", "status", run_id, env=env)
    assert "bye\tskipped" in status.stdout
    dry = run_corral("flow", "retry", run_id, "--from", "hello", "--dry-run", env=env)
    assert dry.stdout.endswith("would run again: hello\n")  # bye stays disabled in that run
    first_run = listed[2].split("\t")[0]
    dry = run_corral("flow", "retry", first_run, "--from", "hello", "--dry-run", env=env)
    assert dry.stdout.endswith("would run again: hello, bye\n")
    (tmp_path / "cycle.yaml").write_text(
        "name: c\njobs:\n  - {name: a, shell: x, depends_on: [a]\n"
    )
    broken = run_corral("flow", "apply", str(tmp_path / "cycle.yaml"), env=env)
    assert broken.returncode == 6 and "cycle.yaml:" in broken.stderr
    assert run_corral("flow", "status", "nope", env=env).returncode == 5
    assert run_corral("flow", "pause", "greet", env=env).returncode == 0
    assert "(paused)" in run_corral("flow", "show", "greet", env=env).stdout
    assert run_corral("flow", "delete", "greet", env=env).returncode == 0
    assert run_corral("flow", "show", "greet", env=env).returncode == 5


def test_the_python_client_builds_applies_and_waits_for_a_flow(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    from corral_test_tasks import add, square

    start_worker(server)
    wait_for_workers(server)
    flow = (
        corral.Flow("math", parameters={"n": {"type": "int"}})
        .job("square", python=square, args=["${n}"])
        .job("add", python=add, args=["${jobs.square.result}", 2], depends_on=["square"])
    )
    with server.connect() as client:
        [applied] = client.flows.apply(flow)
        assert (applied.name, applied.outcome) == ("math", "created")
        run = client.flows.run("math", n=4)
        assert run.wait(timeout=WAIT) is FlowRunState.SUCCEEDED
        last = client.flows.get("math").last_run
        assert last is not None and (last.id, last.state) == (run.id, "succeeded")
        assert client.get(run.jobs["add"].job_id or "").result == 18
        with pytest.raises(corral.InvalidRequest, match="'n'"):
            client.flows.run("math")
        slow = (
            corral.Flow("slow")
            .job("nap", shell="sleep 1")
            .job("up", shell="true", depends_on=["nap"])
        )
        client.flows.apply(slow)
        napping = client.flows.run("slow")
        with pytest.raises(corral.JobTimeout):
            napping.wait(timeout=0.3)
        changes: list[dict[str, str]] = []
        final = napping.wait(
            on_change=lambda r: changes.append({n: j.state for n, j in r.jobs.items()})
        )
        assert final is FlowRunState.SUCCEEDED and changes[-1] == {
            "nap": "succeeded",
            "up": "succeeded",
        }
        with pytest.raises(corral.NotFound):
            client.flows.status("nope")


def test_a_fan_out_and_fan_in_and_cancel_all_on_failure(
    api: httpx.Client,
    server: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    start_worker(server, "--concurrency", "8")
    wait_for_workers(server)
    fan = [marked(f"part{i}", tmp_path, "split") for i in range(20)]
    flow = {
        "jobs": [
            marked("split", tmp_path),
            *fan,
            marked("merge", tmp_path, *(j["name"] for j in fan)),
        ]
    }
    api.put("/api/v1/flows/fan", json=flow).raise_for_status()
    run = ended(api, api.post("/api/v1/flows/fan/runs", json={}).json()["id"])
    assert run["state"] == "succeeded" and set(states(run).values()) == {"succeeded"}
    assert all(runs_of(tmp_path, name) == 1 for name in states(run))
    failing = {
        "on_failure": "cancel_all",
        "jobs": [
            marked("slow", tmp_path, then="sleep 30"),
            marked("broken", tmp_path, then="false"),
            marked("after", tmp_path, "slow", "broken", trigger="all_done"),
        ],
    }
    api.put("/api/v1/flows/halt", json=failing).raise_for_status()
    run = ended(api, api.post("/api/v1/flows/halt/runs", json={}).json()["id"])
    assert run["state"] == "failed"
    assert states(run) == {"slow": "cancelled", "broken": "failed", "after": "cancelled"}
    assert runs_of(tmp_path, "after") == 0


def test_a_run_cancelled_just_before_a_kill_9_ends_cancelled(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "5")
    worker = start_worker(server)
    wait_for_workers(server)
    flow = {"jobs": [marked("a", tmp_path, then="sleep 3"), marked("b", tmp_path, "a")]}
    with rest(server) as api:
        api.put("/api/v1/flows/chain", json=flow).raise_for_status()
        run_id = api.post("/api/v1/flows/chain/runs", json={}).raise_for_status().json()["id"]
        job_id = ""

        def a_runs() -> bool:
            nonlocal job_id
            run = api.get(f"/api/v1/flow-runs/{run_id}").raise_for_status().json()
            job_id = next(job["job_id"] for job in run["jobs"] if job["name"] == "a") or ""
            return bool(job_id) and api.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running"

        wait_for(a_runs, WAIT, "job a to be stored as running")
        # The worker cannot hear the kill: the cancel of `a` is under way as the server dies.
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            api.post(f"/api/v1/flow-runs/{run_id}/cancel").raise_for_status()
            server.kill()
        finally:
            worker.proc.send_signal(signal.SIGCONT)
    server.restart()
    with rest(server) as api:
        run = ended(api, run_id, timeout=60)
        core = api.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
    assert run["state"] == "cancelled", run
    assert states(run) == {"a": "cancelled", "b": "cancelled"}
    assert core["state"] == "cancelled"
    assert runs_of(tmp_path, "b") == 0
