"""Flows: DAGs of jobs, optionally on a cron schedule. The pure core, beside the scheduler's.

No I/O, no clock reads, no store: time is passed in, and each module returns decisions for the
server to carry out in the transaction that stores what caused them.

- definition: the flow definition model, parse_flow / load_flows (FlowInvalid on bad input),
  fingerprint() to recognise an unchanged definition, job_spec() to build a run's core jobs;
- parameters: declared parameters, a run's values, `${...}` placeholders;
- dag: the dependency graph (cycles refused, topological order);
- runs: RunMachine, a run's state machine (triggers, on_failure, cancel), and plan_retry;
- cron: CronTimes, fire times in an IANA time zone with explicit DST rules;
- schedule: FlowSchedule and plan_schedule (catch-up and overlap), start_buffered, backfill.

service (FlowService) is the one module here with I/O: it carries the core out on the engine.
"""
