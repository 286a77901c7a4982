"""Handlers the lambda instance tests run (under the real awslambdaric)."""

import os
import sys
import time

COUNT = 0


def handler(event, context):
    global COUNT
    COUNT += 1
    print(f"serving {context.aws_request_id} #{COUNT}")
    print(f"to stderr {context.aws_request_id}", file=sys.stderr)
    action = event.get("action") if isinstance(event, dict) else "raw"
    if action == "fail":
        raise ValueError("no good " + context.aws_request_id)
    if action == "sleep":
        time.sleep(event["s"])
    if action == "crash":
        os._exit(3)
    if action == "big":
        return "x" * event["n"]
    if action == "steal":
        import socket
        import urllib.error
        import urllib.request

        url = f"http://{event['api']}/2018-06-01/runtime/invocation/next"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return {"status": answer.status, "body": answer.read().decode()}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code}
        except (urllib.error.URLError, OSError):
            return {"status": "unreachable"}
    if action == "redis":
        import socket

        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
            return {"redis": "open"}
        except OSError:
            return {"redis": "closed"}
    if action == "raw":
        return {"raw": event.decode()}
    names = [
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "_HANDLER",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_REGION",
        "LAMBDA_TASK_ROOT",
        "HODEI_FUNCTION",
        "HODEI_REVISION",
        "HODEI_AGENT_MARK",
        "SECRET",
        "_X_AMZN_TRACE_ID",
        "AWS_LAMBDA_RUNTIME_API",
    ]
    return {
        "pid": os.getpid(),
        "count": COUNT,
        "event": event,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "memory": context.memory_limit_in_mb,
        "env": {name: os.environ.get(name) for name in names},
    }
