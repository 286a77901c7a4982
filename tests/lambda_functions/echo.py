"""Echoes its event (the agent wiring tests)."""


def handler(event, context):
    return {"echo": event}
