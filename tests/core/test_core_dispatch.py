"""SPEC §5: turning a ready step into a job."""

from __future__ import annotations

from harness import Sim, step, workflow

from cordtrio.core.events import DispatchFailed
from cordtrio.model import RunStatus, StepMeta, StepStatus
from cordtrio.protocol import ActorType, Budget, JobPriority, JobRequest


def _one(run_input=None, *, sim_kw=None, wf_kw=None, **step_kw):
    wf = workflow(step("s", **step_kw), validate=False, **(wf_kw or {}))
    sim = Sim(wf, run_input=run_input, **(sim_kw or {}))
    sim.start()
    return sim


def _req(sim):
    [d] = sim.dispatches
    return d.request


def test_job_id_is_run_step_attempt():
    sim = _one()
    [d] = sim.dispatches
    assert d.job_id == d.request.job_id == "run-1:s@1"
    assert sim.job("s") == "run-1:s@1"


def test_job_id_keeps_colons_of_the_run_id():
    from cordtrio.model import WorkflowRun

    wf = workflow(step("s"))
    sim = Sim(wf, run=WorkflowRun(id="tenant:42", workflow_id="wf1"))
    sim.start()
    assert sim.dispatched() == ["tenant:42:s@1"]


def test_payload_is_the_rendered_step_input():
    sim = _one({"user": {"name": "ada"}, "tags": ["x", "y"]},
               input={"who": "${input.user.name}", "tags": "${input.tags}", "lit": 3,
                      "msg": "hi ${input.user.name}!"})
    assert sim.dispatches[0].payload == {"who": "ada", "tags": ["x", "y"], "lit": 3,
                                         "msg": "hi ada!"}
    assert sim.sr("s").input == sim.dispatches[0].payload


def test_payload_without_step_input_is_the_run_input():
    sim = _one({"a": 1, "b": {"c": 2}})
    assert sim.dispatches[0].payload == {"a": 1, "b": {"c": 2}}


def test_input_rendering_to_a_non_map_fails_without_dispatch():
    # Step.input is a dict in the model; a raw template string gets here only when the
    # Step is constructed directly.
    sim = _one({"items": [1, 2]}, input="${input.items}")
    assert sim.dispatches == []
    assert sim.status("s") == StepStatus.FAILED
    assert "step input must be object, got array" in sim.sr("s").error["message"]


INT_N = {"type": "object", "properties": {"n": {"type": "integer"}}}


def test_input_schema_violation_fails_without_dispatch():
    sim = _one({"n": "x"}, input_schema=INT_N)
    assert sim.dispatches == []
    assert sim.status("s") == StepStatus.FAILED
    assert "$.n" in sim.sr("s").error["message"]


def test_input_schema_accepts_a_valid_payload():
    sim = _one({"n": 1}, input_schema=INT_N)
    assert sim.dispatched() == ["run-1:s@1"]


def test_input_schema_id_without_registry_fails_schema_registry_unavailable():
    sim = _one({"n": 1}, input_schema_id="s1", sim_kw={"schemas": None})
    assert sim.dispatches == []
    assert "schema registry unavailable" in sim.sr("s").error["message"]


def test_input_schema_id_with_registry_validates():
    schema = {"type": "object", "required": ["n"]}
    ok = _one({"n": 1}, input_schema_id="s1", sim_kw={"schemas": {"s1": schema}})
    assert ok.dispatched() == ["run-1:s@1"]
    bad = _one({"m": 1}, input_schema_id="s1", sim_kw={"schemas": {"s1": schema}})
    assert bad.dispatches == []
    assert bad.status("s") == StepStatus.FAILED


def test_unknown_registry_schema_fails_the_step():
    sim = _one({}, input_schema_id="nope", sim_kw={"schemas": {}})
    assert sim.dispatches == []
    assert "nope" in sim.sr("s").error["message"]


def test_context_ptr_with_payload_store():
    sim = _one()
    [d] = sim.dispatches
    assert d.context_key == "ctx:run-1:s@1"
    assert d.request.context_ptr == "redis://ctx:run-1:s@1"
    assert sim.events("step_dispatched")[0].data["context_ptr"] == "redis://ctx:run-1:s@1"


def test_no_context_ptr_without_payload_store():
    sim = _one(sim_kw={"has_payload_store": False})
    [d] = sim.dispatches
    assert d.context_key == "" and d.request.context_ptr == ""
    assert "context_ptr" not in sim.events("step_dispatched")[0].data


def test_topic_is_step_topic_or_default_per_workflow():
    assert _req(_one(topic="job.resize")).topic == "job.resize"
    assert _req(_one(topic="", worker_id="w1")).topic == "job.workflow.wf1"


def test_priority_from_run_input():
    assert _req(_one({"priority": "critical"})).priority == JobPriority.CRITICAL
    assert _req(_one({"priority": "interactive"})).priority == JobPriority.INTERACTIVE
    assert _req(_one({"priority": "batch"})).priority == JobPriority.BATCH
    assert _req(_one({"priority": "urgent!"})).priority == JobPriority.BATCH
    assert _req(_one({})).priority == JobPriority.BATCH


def test_memory_id_from_input_else_run_scoped():
    assert _req(_one({"memory_id": "mem-7"})).memory_id == "mem-7"
    assert _req(_one({"memory_id": ""})).memory_id == "run:run-1"
    assert _req(_one({"memory_id": 5})).memory_id == "run:run-1"
    assert _req(_one({"memory_id": "  "})).memory_id == "run:run-1"
    assert _req(_one({"memory_id": " mem-8 "})).memory_id == "mem-8"
    req = _req(_one({}))
    assert req.memory_id == req.env["memory_id"] == "run:run-1"


def test_a_run_without_input_gets_the_request_of_a_run_whose_input_says_nothing():
    # a run without input skips looking the priority and memory id up: the same request
    assert _req(_one({})) == _req(_one({"unrelated": "value", "priority": 3}))


def test_env_keys():
    req = _req(_one())
    assert req.env == {
        "workflow_id": "wf1", "run_id": "run-1", "step_id": "s", "tenant_id": "org1",
        "team_id": "team1", "memory_id": "run:run-1", "context_mode": "raw",
    }


def test_request_identity_fields():
    req = _req(_one(worker_id="w1", topic="t"))
    assert req.adapter_id == "w1"
    assert req.workflow_id == "wf1"
    assert req.tenant_id == "org1"


def test_every_request_field_lands_where_it_belongs():
    meta = StepMeta(actor_id="alice")
    req = _req(_one({"priority": "critical", "memory_id": "mem"}, worker_id="w1", topic="t",
                    timeout_sec=2, meta=meta))
    assert req == JobRequest(
        job_id="run-1:s@1", topic="t", priority=JobPriority.CRITICAL,
        context_ptr="redis://ctx:run-1:s@1", adapter_id="w1", env=req.env, parent_job_id="",
        workflow_id="wf1", step_index=0, memory_id="mem", budget=Budget(deadline_ms=2000),
        tenant_id="org1", principal_id="alice", labels=req.labels, meta=req.meta)
    assert req.env["memory_id"] == "mem" and req.labels["worker_id"] == "w1"
    assert req.meta is not None and req.meta.actor_id == "alice"


def test_labels_include_worker_id_and_route_labels():
    req = _req(_one(worker_id="w1", route_labels={"gpu": "a100"}))
    assert req.labels == {"workflow_id": "wf1", "run_id": "run-1", "step_id": "s",
                          "worker_id": "w1", "gpu": "a100"}
    assert "worker_id" not in _req(_one()).labels


def test_budget_deadline_from_timeout_sec():
    assert _req(_one(timeout_sec=2.5)).budget.deadline_ms == 2500
    assert _req(_one()).budget is None


def test_meta_is_trimmed_and_mapped():
    meta = StepMeta(actor_id=" alice ", actor_type=" Human ", idempotency_key=" k ",
                    pack_id=" p ", capability=" cap ", risk_tags=[" pii ", "", "  "],
                    requires=["", " gpu"], labels={"a": "b"})
    req = _req(_one(meta=meta))
    m = req.meta
    assert (m.actor_id, m.actor_type, m.idempotency_key, m.pack_id, m.capability) == (
        "alice", ActorType.HUMAN, "k", "p", "cap")
    assert m.risk_tags == ["pii"] and m.requires == ["gpu"]
    assert m.labels == {"a": "b"}
    assert m.tenant_id == "org1"
    assert req.principal_id == "alice"


def test_meta_actor_type_service_and_unknown():
    assert _req(_one(meta=StepMeta(actor_type="service"))).meta.actor_type == ActorType.SERVICE
    assert _req(_one(meta=StepMeta(actor_type="robot"))).meta.actor_type == (
        ActorType.UNSPECIFIED)


def test_meta_carries_tenant_even_without_step_meta():
    req = _req(_one())
    assert req.meta is not None and req.meta.tenant_id == "org1"
    assert req.principal_id == ""


def test_meta_omitted_when_entirely_empty():
    req = _req(_one(wf_kw={"org_id": ""}, meta=StepMeta(actor_id="  ", risk_tags=[" "])))
    assert req.meta is None


def test_dry_run_flag_on_run():
    req = _req(_one(sim_kw={"dry_run": True}))
    assert req.env["dry_run"] == "true" and req.labels["dry_run"] == "true"


def test_dry_run_via_metadata():
    req = _req(_one(sim_kw={"metadata": {"dry_run": "true"}}))
    assert req.env["dry_run"] == "true" and req.labels["dry_run"] == "true"
    req = _req(_one(sim_kw={"metadata": {"dry_run": "false"}}))
    assert "dry_run" not in req.env and "dry_run" not in req.labels


def test_dispatch_records_running_attempt_and_timeline():
    sim = _one()
    sr = sim.sr("s")
    assert (sr.status, sr.attempts, sr.job_id, sr.started_at) == (
        StepStatus.RUNNING, 1, "run-1:s@1", sim.now)
    [ev] = sim.events("step_dispatched")
    assert (ev.step_id, ev.job_id, ev.status) == ("s", "run-1:s@1", "running")


def test_attempts_increment_per_dispatch():
    from cordtrio.model import RetryConfig

    sim = _one(retry=RetryConfig(max_retries=2))
    sim.fail("run-1:s@1")
    sim.advance(1)
    assert sim.sr("s").attempts == 2
    assert sim.dispatched() == ["run-1:s@1", "run-1:s@2"]


def test_dispatch_failure_fails_the_step():
    sim = _one()
    sim.feed(DispatchFailed("s", "run-1:s@1", "bus unreachable"))
    assert sim.status("s") == StepStatus.FAILED
    assert "bus unreachable" in sim.sr("s").error["message"]
    assert sim.run.status == RunStatus.FAILED


def test_dispatch_failure_for_another_attempt_is_ignored():
    sim = _one()
    sim.feed(DispatchFailed("s", "run-1:s@0", "old"))
    assert sim.status("s") == StepStatus.RUNNING


def test_a_plain_request_without_tenant_is_the_init_one():
    # no org, no labels beyond the three, no meta: the short way through ``emit_job``
    req = _req(_one(wf_kw={"org_id": ""}))
    assert req == JobRequest(
        job_id="run-1:s@1", topic="job.test", priority=JobPriority.BATCH,
        context_ptr="redis://ctx:run-1:s@1", env=req.env, workflow_id="wf1",
        memory_id="run:run-1", labels={"workflow_id": "wf1", "run_id": "run-1", "step_id": "s"})
    assert req.meta is None and req.tenant_id == "" and req.env["tenant_id"] == ""


def test_route_labels_are_set_after_worker_id():
    req = _req(_one(worker_id="w1", route_labels={"worker_id": "w2", "step_id": "x"}))
    assert req.labels == {"workflow_id": "wf1", "run_id": "run-1", "step_id": "x",
                          "worker_id": "w2"}


def test_a_step_replaced_after_the_plan_gets_a_job_of_its_own_fields():
    """A step that is not the plan's (a caller's replacement) makes its job from its own
    fields, not from what the plan worked out for the step of that id."""
    from dataclasses import replace

    from cordtrio.core.plan import Plan, job_shape

    wf = workflow(step("s", worker_id="w1", timeout_sec=2, route_labels={"g": "1"}),
                  validate=False)
    plan = Plan.build(wf)
    other = replace(wf.steps["s"], topic="t2", worker_id="w2", route_labels={},
                    timeout_sec=0)
    shape = job_shape(plan, other)
    assert (shape.topic, shape.adapter_id, shape.labels, shape.timed, shape.timer) == \
        ("t2", "w2", {"worker_id": "w2"}, False, None)
    assert job_shape(Plan.build(wf, starts_reported=True), wf.steps["s"]).timer is None


def test_a_timeout_shorter_than_a_millisecond_still_budgets_and_times_out():
    """SPEC §6: any positive ``timeout_sec`` is a timeout, even one whose deadline rounds
    to 0 ms or whose timer is due at once."""
    for timeout in (0.0004, 1e-7):
        sim = _one(timeout_sec=timeout)
        assert _req(sim).budget == Budget(deadline_ms=0)
        sim.advance(0.001)
        assert sim.run.steps["s"].status == StepStatus.TIMED_OUT, timeout


def test_a_step_whose_fields_cannot_make_a_job_fails_alone_when_it_would_start():
    """A definition built without validation whose job step has a bad timeout: the plan
    is made (the other steps run), the bad step's job fails where it would be made."""
    import pytest

    from cordtrio.core.plan import Plan

    wf = workflow(step("ok"), step("bad", timeout_sec=None, depends_on=["ok"]),
                  validate=False)
    plan = Plan.build(wf)
    assert "bad" not in plan.shapes and "bad" not in plan.plain_jobs
    sim = Sim(wf)
    sim.start()
    assert [d.step_id for d in sim.dispatches] == ["ok"]
    with pytest.raises(TypeError):
        sim.succeed(sim.job("ok"))
