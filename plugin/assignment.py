"""What an agent is told to run: an ``AssignJobRequest`` from a lease and the function
revision it was accepted with."""

from __future__ import annotations

from hodei.plugin.data.leases import Lease
from hodei.plugin.models import FunctionSpec
from hodei.proto import hodei_pb2 as pb


def function_template(spec: FunctionSpec, revision: str) -> pb.AssignJobRequest:
    """The function part of an assignment (also what a pre-warm request carries)."""
    return pb.AssignJobRequest(
        function=spec.name,
        runtime=spec.runtime,
        interface=spec.interface,
        handler=spec.handler,
        warm=pb.WarmPolicy(min=spec.warm.min, max=spec.warm.max, idle_s=spec.warm.idle_s),
        revision=revision,
        image=spec.image,
        command=list(spec.command),
        env=spec.env,
        network=spec.network,
        timeout_s=spec.timeout_s,
        resources=pb.Resources(
            cpu_millicores=spec.resources.cpu_millicores,
            memory_mb=spec.resources.memory_mb,
            gpus=spec.resources.gpus,
            job_slots=1,
        ),
    )


def request(lease: Lease, spec: FunctionSpec) -> pb.AssignJobRequest:
    message = function_template(spec, lease.revision)
    message.invocation_id = lease.invocation_id
    message.attempt = lease.attempt
    message.payload = lease.payload
    message.traceparent = lease.traceparent
    return message
