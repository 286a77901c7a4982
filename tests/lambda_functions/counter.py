"""A handler that counts what its instance served (whole-stack lambda tests)."""

import os
import time

served = 0


def handler(event, context):
    global served
    served += 1
    print(f"serving {context.aws_request_id}")
    if event.get("fail"):
        raise KeyError("missing thing")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "served": served}
