"""The warm benchmark's handler: echoes its event."""


def handler(event, context):
    return event
