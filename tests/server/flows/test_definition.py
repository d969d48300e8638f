"""Flow definitions: what parses, every error message for what does not, the fingerprint that
recognises an unchanged definition, and parameters and results substituted into jobs."""

from __future__ import annotations

import copy
import shlex
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from corral.constants import MAX_FLOW_JOB_NAME_LENGTH, MAX_FLOW_JOBS, MAX_NAME_LENGTH
from corral.errors import FlowInvalid, InvalidRequest
from corral.models import JobKind
from corral.server.flows.definition import (
    FlowDefinition,
    OnFailure,
    Trigger,
    load_flows,
    parse_flow,
)
from corral.server.flows.parameters import parse_parameter_texts, resolve_parameters
from corral.server.flows.schedule import CatchUp, Overlap

ETL: dict[str, Any] = {
    "name": "etl",
    "description": "nightly load",
    "parameters": {
        "date": {"type": "str"},
        "limit": {"type": "int", "default": 100},
        "ratio": {"type": "float", "default": 0.5},
        "dry": {"type": "bool", "default": False},
    },
    "jobs": [
        {"name": "extract", "shell": "extract --date ${date} --limit ${limit}"},
        {
            "name": "transform",
            "python": "etl.tasks:transform",
            "args": ["${jobs.extract.result}", "${ratio}", "ratio is ${ratio}"],
            "kwargs": {"dry": "${dry}", "nested": ["${limit}"]},
            "depends_on": ["extract"],
            "env": {"RUN_DATE": "${date}"},
        },
        {
            "name": "load",
            "shell": ["load", "--date", "${date}"],
            "depends_on": ["transform"],
            "retries": 2,
        },
        {
            "name": "alert",
            "shell": "notify failed",
            "depends_on": ["extract", "transform", "load"],
            "trigger": "one_failed",
        },
    ],
    "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
    "on_failure": "finish_possible",
}


def problems_of(data: Any) -> str:
    with pytest.raises(FlowInvalid) as caught:
        parse_flow(data)
    return str(caught.value)


def with_jobs(*jobs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "f", "jobs": list(jobs), **fields}


def test_a_full_definition_parses_with_its_defaults() -> None:
    flow = parse_flow(ETL)
    assert flow.on_failure is OnFailure.FINISH_POSSIBLE
    assert flow.max_active_runs == 1
    assert flow.job("alert").trigger is Trigger.ONE_FAILED
    assert flow.job("extract").trigger is Trigger.ALL_SUCCEEDED
    assert flow.schedule is not None
    assert flow.schedule.overlap is Overlap.SKIP
    assert flow.schedule.catch_up is CatchUp.LATEST
    assert flow.schedule.catch_up_window == 86400
    assert flow.dag.order == ("extract", "transform", "load", "alert")
    assert flow.result_sources("transform") == {"extract"}


def test_flows_load_from_yaml_one_per_document() -> None:
    text = """
name: first
jobs:
  - name: hello
    shell: echo hello
---
name: second
jobs:
  - {name: a, python: "pkg.mod:run", args: [1, 2]}
  - {name: b, shell: [ls, -l], depends_on: [a], trigger: all_done}
"""
    first, second = load_flows(text, "flows.yaml")
    assert first.job("hello").shell == "echo hello"
    assert second.dag.upstream("b") == ("a",)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: x\njobs: [\n", "flows.yaml:3:1: "),
        ("name: x\n  jobs: 1\n", "flows.yaml:2:7: "),
        ("name: [x\nother: 1\n", "flows.yaml:2:6: "),
    ],
)
def test_yaml_syntax_errors_name_file_line_and_column(text: str, where: str) -> None:
    with pytest.raises(FlowInvalid) as caught:
        load_flows(text, "flows.yaml")
    assert str(caught.value).startswith(where)
    assert str(caught.value).endswith("fix the YAML there")


def test_an_empty_file_and_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(FlowInvalid, match=r"flows\.yaml holds no flow"):
        load_flows("# nothing\n", "flows.yaml")
    with pytest.raises(FlowInvalid, match="a flow is a mapping with 'name' and 'jobs', not a list"):
        load_flows("- 1\n- 2\n", "flows.yaml")


JOB = {"name": "a", "shell": "true"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            with_jobs(
                {"name": "a", "shell": "x", "depends_on": ["b"]},
                {"name": "b", "shell": "x", "depends_on": ["c"]},
                {"name": "c", "shell": "x", "depends_on": ["a"]},
            ),
            "flow 'f': jobs depend on each other in a cycle: a -> b -> c -> a (X -> Y: X depends "
            "on Y); remove one of these dependencies",
        ),
        (
            with_jobs(
                {"name": "start", "shell": "x"},
                {"name": "p", "shell": "x", "depends_on": ["start", "q"]},
                {"name": "q", "shell": "x", "depends_on": ["p"]},
            ),
            "cycle: p -> q -> p",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "depends_on": ["a"]}),
            "flow 'f': job 'a' depends on itself; remove it from its depends_on",
        ),
        (
            with_jobs(JOB, {"name": "b", "shell": "x", "depends_on": ["a", "extrct"]}),
            "flow 'f': job 'b' depends on 'extrct', not a job of this flow (jobs: 'a', 'b')",
        ),
        (
            with_jobs(JOB, {"name": "a", "shell": "y"}),
            "flow 'f': 2 jobs are named 'a'; give each job its own name",
        ),
        (
            with_jobs({**JOB, "retry": 3}),
            "flow 'f': job 'a': unknown key 'retry'; allowed keys: name, shell, python, args, "
            "kwargs, ssh, queue, priority, tags, env, cwd, user, timeout, retries, idempotent, "
            "depends_on, trigger",
        ),
        (
            with_jobs(JOB, colour="blue"),
            "flow 'f': unknown key 'colour'; allowed keys: name, description, parameters, jobs, "
            "schedule, max_active_runs, on_failure",
        ),
        (
            with_jobs(JOB, schedule={"cron": "* * * * *", "overlaps": "skip"}),
            "flow 'f': schedule: unknown key 'overlaps'; allowed keys: cron, timezone, overlap, "
            "catch_up, catch_up_window, pause_on_failure",
        ),
        (
            with_jobs(JOB, parameters={"day": {"type": "str", "required": True}}),
            "flow 'f': parameters day: unknown key 'required'; allowed keys: type, default, "
            "description",
        ),
        (
            with_jobs({"name": "a", "ssh": {"hosts": ["h"], "command": "x", "fork": 5}}),
            "job 'a' ssh: unknown key 'fork'; allowed keys: hosts, inventory",
        ),
        (
            with_jobs(JOB, parameters={"limit": {"type": "int", "default": "ten"}}),
            "flow 'f': parameters limit default: the default 'ten' is a str, not an int; give a "
            "default of the declared type",
        ),
        (
            with_jobs(JOB, parameters={"limit": {"type": "integer"}}),
            "parameters limit type: Input should be 'str', 'int', 'float' or 'bool'",
        ),
        (
            with_jobs(JOB, parameters={"1st": {}}),
            "parameter name '1st' is not a name",
        ),
        (
            with_jobs({"name": "a", "shell": "echo ${day}"}, parameters={"date": {}}),
            "flow 'f': job 'a' shell: ${day} names no declared parameter (declared: date)",
        ),
        (
            with_jobs({"name": "a", "shell": "echo", "env": {"X": "${date"}}),
            "",  # an unclosed brace is plain text
        ),
        (
            with_jobs({"name": "a", "shell": "echo ${a b}"}),
            "job 'a' shell: ${a b} is not a placeholder; write ${parameter}, ${jobs.JOB.result}, "
            "or $${ for a literal ${",
        ),
        (
            with_jobs(JOB, schedule={"cron": "0 0 30 2 *"}),
            "flow 'f': schedule: cron '0 0 30 2 *' never fires (no date matches it); fix its day "
            "or month",
        ),
        (
            with_jobs(JOB, schedule={"cron": "0 3 * * *", "timezone": "Europe/Frankfurt"}),
            "flow 'f': schedule: unknown time zone 'Europe/Frankfurt'; give an IANA name such "
            "as 'UTC', 'Europe/Berlin' or 'America/New_York'",
        ),
        (
            with_jobs(JOB, {"name": "b", "python": "m:f", "args": ["${jobs.a.result}"]}),
            "flow 'f': job 'b' uses ${jobs.a.result}, but 'a' is not upstream of it; add 'a' "
            "to its depends_on",
        ),
        (
            with_jobs(JOB, {"name": "b", "python": "m:f", "args": ["${jobs.zz.result}"]}),
            "job 'b' uses ${jobs.zz.result}, but 'zz' is not upstream of it; no job is named 'zz'",
        ),
        (
            with_jobs(JOB, {"name": "b", "shell": "echo ${jobs.a.result}", "depends_on": ["a"]}),
            "job 'b' shell: ${jobs.a.result} can only be a whole python argument",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "python": "m:f"}),
            "flow 'f': job 'a': a job needs exactly one of 'shell', 'python' or 'ssh' ('shell' "
            "and 'python')",
        ),
        (
            with_jobs({"name": "a"}),
            "job 'a': a job needs exactly one of 'shell', 'python' or 'ssh' (none)",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "args": [1]}),
            "job 'a': 'args' and 'kwargs' go with 'python' jobs only",
        ),
        (
            with_jobs({"name": "a", "python": "not a target"}),
            "flow 'f': job 'a': target 'not a target' is not 'module:function'",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "queue": "a queue"}),
            "flow 'f': job 'a': queue: queue names are 1-128 characters",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "timeout": 0}),
            "flow 'f': job 'a' timeout: Input should be greater than 0",
        ),
        (
            with_jobs(JOB, {"name": "b", "shell": "x", "trigger": "one_failed"}),
            "flow 'f': job 'b' has trigger one_failed but no depends_on; it would never run",
        ),
        (
            with_jobs({"name": "a", "shell": "x", "trigger": "sometimes"}),
            "job 'a' trigger: Input should be 'all_succeeded', 'all_done', 'one_failed' or "
            "'one_succeeded'",
        ),
        (with_jobs(), "flow 'f': jobs: List should have at least 1 item"),
        ({"jobs": [JOB]}, "name: Field required"),
        (
            with_jobs(JOB, name="has space"),
            "name: flow names are 1-128 letters, digits, '_', '.' or '-' (starting with a letter",
        ),
        (
            with_jobs({"name": "a.b", "shell": "x"}),
            "job 'a.b' name: job names are 1-120 letters, digits, '_' or '-'",
        ),
        (
            with_jobs({"name": "x" * (MAX_FLOW_JOB_NAME_LENGTH + 1), "shell": "x"}),
            "name: job names are 1-120",
        ),
        (with_jobs(JOB, max_active_runs=0), "max_active_runs: Input should be greater than"),
        (
            with_jobs(JOB, on_failure="explode"),
            "'finish_running', 'cancel_all' or 'finish_possible'",
        ),
    ],
)
def test_every_invalid_definition_says_what_is_wrong(data: dict[str, Any], message: str) -> None:
    if not message:
        parse_flow(data)  # valid: the case documents what is not an error
        return
    assert message in problems_of(data)


def test_all_problems_of_a_definition_are_listed_at_once() -> None:
    error = problems_of(
        with_jobs(
            {"name": "a", "shell": "x", "retry": 1},
            {"name": "b", "shell": "x", "timeout": -1, "colour": 2},
        )
    )
    assert error.count("unknown key") == 2
    assert "job 'b' timeout" in error
    with pytest.raises(FlowInvalid) as caught:
        parse_flow(with_jobs({"name": "a", "bogus": 1}))
    assert caught.value.flow == "f"
    assert isinstance(caught.value, InvalidRequest)  # answered 422 by the API


def test_the_job_limit_is_checked() -> None:
    jobs = [{"name": f"j{i}", "shell": "x"} for i in range(MAX_FLOW_JOBS + 1)]
    assert f"List should have at most {MAX_FLOW_JOBS} items" in problems_of(with_jobs(*jobs))


def test_names_fit_a_core_job_name() -> None:
    flow = parse_flow(
        with_jobs({"name": "j" * MAX_FLOW_JOB_NAME_LENGTH, "shell": "x"}, name="f" * 128)
    )
    spec = flow.job_spec("j" * MAX_FLOW_JOB_NAME_LENGTH, {})
    assert spec.name is not None and len(spec.name) <= MAX_NAME_LENGTH


# -- fingerprint and export ------------------------------------------------------------------


def reordered(data: dict[str, Any]) -> dict[str, Any]:
    """The same definition written another way: keys, jobs and depends_on in reverse order,
    defaults spelled out."""
    out: dict[str, Any] = {}
    for key in reversed(list(data)):
        out[key] = copy.deepcopy(data[key])
    out["jobs"] = [dict(reversed(list(job.items()))) for job in reversed(out["jobs"])]
    for job in out["jobs"]:
        job.setdefault("trigger", "all_succeeded")
        job.setdefault("queue", "default")
        job.setdefault("retries", 0)
        if "depends_on" in job:
            job["depends_on"] = list(reversed(job["depends_on"]))
    out.setdefault("max_active_runs", 1)
    out["schedule"] = {**out["schedule"], "catch_up_window": "1d", "overlap": "skip"}
    return out


def test_the_fingerprint_ignores_order_and_spelled_out_defaults() -> None:
    assert parse_flow(reordered(ETL)).fingerprint() == parse_flow(ETL).fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["jobs"][0].update(shell="extract --all"),
        lambda d: d["jobs"][2].update(retries=3),
        lambda d: d["jobs"][3].update(trigger="all_done"),
        lambda d: d["schedule"].update(timezone="UTC"),
        lambda d: d["parameters"]["limit"].update(default=101),
        lambda d: d.update(max_active_runs=2),
        lambda d: d.update(description="another"),
        lambda d: d["jobs"][1]["args"].reverse(),
    ],
)
def test_the_fingerprint_changes_with_the_meaning(change: Any) -> None:
    changed = copy.deepcopy(ETL)
    change(changed)
    assert parse_flow(changed).fingerprint() != parse_flow(ETL).fingerprint()


def test_export_leaves_defaults_out_and_parses_back() -> None:
    flow = parse_flow(ETL)
    document = flow.export()
    assert "max_active_runs" not in document
    assert "trigger" not in document["jobs"][0]
    assert parse_flow(document) == flow
    assert parse_flow(document).fingerprint() == flow.fingerprint()


JOB_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "retries": st.integers(0, 5),
        "timeout": st.floats(1, 100),
        "queue": st.sampled_from(["default", "gpu"]),
        "tags": st.lists(st.sampled_from(["a", "b", "c"]), unique=True),
        "trigger": st.sampled_from(list(Trigger)),
        "idempotent": st.booleans(),
    },
)


@settings(max_examples=50, deadline=None)
@given(fields=st.lists(JOB_FIELDS, min_size=1, max_size=5), data=st.data())
def test_export_round_trips_any_definition(
    fields: list[dict[str, Any]], data: st.DataObject
) -> None:
    jobs = []
    for index, extra in enumerate(fields):
        depends = data.draw(
            st.lists(
                st.sampled_from([f"j{i}" for i in range(index)]) if index else st.nothing(),
                unique=True,
            )
        )
        job = {"name": f"j{index}", "shell": f"run {index}", **extra, "depends_on": depends}
        if not depends:
            job["trigger"] = "all_done"
        jobs.append(job)
    flow = parse_flow(with_jobs(*jobs))
    assert parse_flow(flow.export()) == flow
    assert parse_flow(flow.export()).fingerprint() == flow.fingerprint()
    shuffled = data.draw(st.permutations(jobs))
    for job in shuffled:
        job["depends_on"] = data.draw(st.permutations(job["depends_on"]))
    assert parse_flow(with_jobs(*shuffled)).fingerprint() == flow.fingerprint()


# -- parameters and results ------------------------------------------------------------------


def test_parameters_are_shell_quoted_in_command_strings_only() -> None:
    flow = parse_flow(ETL)
    values = resolve_parameters("etl", flow.parameters, {"date": "2026-01-01; rm -rf /"})
    extract = flow.job_spec("extract", values)
    assert extract.kind is JobKind.SHELL
    assert extract.command == "extract --date '2026-01-01; rm -rf /' --limit 100"
    assert shlex.split(extract.command)[2] == "2026-01-01; rm -rf /"
    load = flow.job_spec("load", values)
    assert load.command == ["load", "--date", "2026-01-01; rm -rf /"]  # argv: no shell
    assert load.retries == 2 and load.name == "etl/load"


def test_whole_python_arguments_take_typed_values_and_upstream_results() -> None:
    flow = parse_flow(ETL)
    values = resolve_parameters("etl", flow.parameters, {"date": "d", "dry": True})
    spec = flow.job_spec("transform", values, {"extract": {"rows": [1, 2]}})
    assert spec.args == [{"rows": [1, 2]}, 0.5, "ratio is 0.5"]
    assert spec.kwargs == {"dry": True, "nested": [100]}
    assert spec.env == {"RUN_DATE": "d"}
    # An upstream job that did not succeed (a trigger let this one run) gives None.
    assert flow.job_spec("transform", values, {}).args[0] is None


def test_a_doubled_dollar_writes_a_literal_placeholder() -> None:
    flow = parse_flow(
        with_jobs(
            {"name": "a", "shell": "echo $${HOME} ${x}"}, parameters={"x": {"default": "it's"}}
        )
    )
    assert flow.job_spec("a", {"x": "it's"}).command == "echo ${HOME} 'it'\"'\"'s'"


def test_ssh_commands_are_quoted_too() -> None:
    flow = parse_flow(
        with_jobs(
            {"name": "a", "ssh": {"hosts": ["h1"], "command": "mkdir ${dir}"}},
            parameters={"dir": {}},
        )
    )
    spec = flow.job_spec("a", {"dir": "a b"})
    assert spec.ssh is not None and spec.ssh.command == "mkdir 'a b'"


def test_values_that_make_a_job_invalid_are_refused_per_run() -> None:
    flow = parse_flow(with_jobs({"name": "a", "shell": "echo ${x}"}, parameters={"x": {}}))
    with pytest.raises(FlowInvalid, match="job 'a' with these values: shell: contains a NUL"):
        flow.job_spec("a", {"x": "\x00"})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"date": "d", "colour": 1}, "parameter 'colour' is not declared (declared: date, dry, "),
        ({"date": 5}, "parameter 'date': 5 is an int, not a str"),
        ({"date": "d", "limit": "5"}, "parameter 'limit': '5' is a str, not an int"),
        ({"date": "d", "limit": True}, "parameter 'limit': True is a bool, not an int"),
        ({"date": "d", "dry": 1}, "parameter 'dry': 1 is an int, not a bool"),
        ({}, "parameter 'date' has no default; give it (-p date=VALUE)"),
    ],
)
def test_run_parameters_of_the_wrong_type_or_not_declared(given: Any, message: str) -> None:
    flow = parse_flow(ETL)
    with pytest.raises(FlowInvalid) as caught:
        resolve_parameters("etl", flow.parameters, given)
    assert str(caught.value).startswith("flow 'etl': ")
    assert message in str(caught.value)


def test_a_float_parameter_takes_an_int() -> None:
    flow = parse_flow(ETL)
    assert resolve_parameters("etl", flow.parameters, {"date": "d", "ratio": 2})["ratio"] == 2.0


def test_parameters_from_command_line_text_are_typed_by_their_declaration() -> None:
    flow = parse_flow(ETL)
    texts = {"date": "2026-01-01", "limit": "7", "ratio": "1.5", "dry": "yes", "other": "x"}
    assert parse_parameter_texts("etl", flow.parameters, texts) == {
        "date": "2026-01-01",
        "limit": 7,
        "ratio": 1.5,
        "dry": True,
        "other": "x",
    }
    with pytest.raises(FlowInvalid, match="parameter 'limit': 'seven' is not an int"):
        parse_parameter_texts("etl", flow.parameters, {"limit": "seven"})
    with pytest.raises(FlowInvalid, match="parameter 'dry': 'maybe' is not a bool"):
        parse_parameter_texts("etl", flow.parameters, {"dry": "maybe"})


def test_a_definition_is_immutable() -> None:
    flow = parse_flow(ETL)
    with pytest.raises(Exception, match="frozen"):
        flow.name = "other"  # type: ignore[misc]
    assert isinstance(flow, FlowDefinition)
