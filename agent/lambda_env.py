"""What a lambda instance finds in its environment: the variables the AWS runtime clients
read, and Hodei's own.

An instance outlives invocations, so nothing in it names one invocation: the id, the
attempt and the trace of each arrive with it through the Runtime API (headers of
``next``), as on AWS.
"""

from __future__ import annotations

from hodei.proto import hodei_pb2 as pb

# Variables the platform owns: a spec's `env` cannot override them.
RESERVED = (
    "AWS_LAMBDA_RUNTIME_API",
    "_HANDLER",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "HODEI_FUNCTION",
    "HODEI_REVISION",
    "HODEI_INSTANCE",
)


def function_arn(job: pb.AssignJobRequest, region: str) -> str:
    """The ARN-shaped name a runtime client reads as ``invoked_function_arn`` (Hodei's own
    partition: it names no AWS resource)."""
    return f"arn:hodei:lambda:{region}:000000000000:function:{job.function}"


def instance_env(
    job: pb.AssignJobRequest,
    runtime_api: str,
    region: str,
    instance_id: str,
    task_root: str = "",
) -> dict[str, str]:
    """The spec's ``env`` with the platform's variables on top. ``AWS_REGION`` is the
    operator's region unless the spec names one (functions may call a real cloud);
    ``LAMBDA_TASK_ROOT`` is set for process instances (where the code is looked up) and
    left to the image for containers, whose Lambda base images define it."""
    env = {k: v for k, v in job.env.items() if k not in RESERVED}
    env.setdefault("AWS_REGION", region)
    env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": runtime_api,
            "AWS_LAMBDA_FUNCTION_NAME": job.function,
            "AWS_LAMBDA_FUNCTION_VERSION": job.revision or "$LATEST",
            "HODEI_FUNCTION": job.function,
            "HODEI_REVISION": job.revision,
            "HODEI_INSTANCE": instance_id,
        }
    )
    if job.handler:
        env["_HANDLER"] = job.handler
    if job.resources.memory_mb > 0:
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(job.resources.memory_mb)
    if task_root:
        env["LAMBDA_TASK_ROOT"] = task_root
    return env
