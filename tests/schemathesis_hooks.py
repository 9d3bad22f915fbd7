"""Serializers for the two media types of mailpipe's API that Schemathesis does not know:
NDJSON events (one JSON object per line) and raw RFC 5322 messages. Loaded by
tests/tests/contract.rs through SCHEMATHESIS_HOOKS."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(item) for item in items).encode()


@schemathesis.serializer("message/rfc822")
def rfc822(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


@schemathesis.hook
def map_query(ctx, query):
    """The changes feed's long poll (`wait`, up to 30 s) is kept to a second, so that the run
    does not spend its time waiting for changes that never come."""
    if query and "wait" in query:
        query["wait"] = "1s"
    return query
