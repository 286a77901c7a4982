"""A warm Python function shipped with Hodei, for ``hodei dev --demo``: deploy it with
``{"runtime": "process", "interface": "lambda", "handler": "hodei.agent.lambda_demo.handler"}``
(the agents' Python has Hodei, and needs ``awslambdaric``: ``pip install 'hodei[lambda]'``).
"""

from __future__ import annotations

import os
from typing import Any

_served = 0  # lives as long as the instance: shows that it stays warm


def handler(event: Any, context: Any) -> dict[str, Any]:
    global _served
    _served += 1
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"hello {name} from instance {os.getpid()} (invocation {_served})")
    return {"hello": name, "instance_pid": os.getpid(), "served": _served}
