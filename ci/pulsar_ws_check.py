#!/usr/bin/env python3
"""Check the Pulsar WebSocket emulator with an independent client.

Speaks the JSON protocol as reference/pulsar-ws.md section 1 describes it, using the
`websockets` package (Debian: python3-websockets), so the emulator is exercised by code
that shares nothing with the Rust client. Run by `cargo xtask integration`:

    python3 ci/pulsar_ws_check.py ws://127.0.0.1:PORT TOKEN
"""

import asyncio
import base64
import json
import re
import sys

import websockets

BASE, TOKEN = sys.argv[1], sys.argv[2]
TOPIC = "persistent/public/default/python-check"
ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def url(path, **params):
    params.setdefault("token", TOKEN)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{BASE}{path}?{query}"


def status_of(exc):
    """HTTP status of a refused upgrade, across websockets versions."""
    for attr in ("status_code",):
        if hasattr(exc, attr):
            return getattr(exc, attr)
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


async def refused(target):
    try:
        async with websockets.connect(target):
            return None
    except Exception as exc:  # InvalidStatusCode (10.x) or InvalidStatus (11+)
        return status_of(exc)


def varints(data):
    fields, i = {}, 0
    while i < len(data):
        tag, shift, value = data[i], 0, 0
        i += 1
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[tag >> 3] = value
    return fields


async def recv_json(ws, timeout=2.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def nothing_within(ws, seconds):
    try:
        await asyncio.wait_for(ws.recv(), seconds)
        return False
    except asyncio.TimeoutError:
        return True


async def main():
    # Authentication: no token -> 401.
    check(await refused(f"{BASE}/ws/v2/producer/{TOPIC}") == 401, "missing token must give 401")
    # Validation: ackTimeoutMillis below 1000 -> 400; bad enum -> 400.
    check(await refused(url(f"/ws/v2/consumer/{TOPIC}/s", ackTimeoutMillis=500)) == 400, "ackTimeout 500 must give 400")
    check(await refused(url(f"/ws/v2/consumer/{TOPIC}/s", subscriptionType="Key_shared")) == 400, "bad enum must give 400")

    # A malformed percent-escape in the path is a bad request.
    check(await refused(url(f"/ws/v2/producer/persistent/public/default/bad%ZZtopic")) == 400, "%ZZ in the path must give 400")

    # A text frame over the server's limit (webSocketMaxTextFrameSize, 1 MiB): close 1009.
    async with websockets.connect(url(f"/ws/v2/producer/{TOPIC}"), max_size=None) as big:
        await big.send("x" * (1024 * 1024 + 1))
        try:
            await asyncio.wait_for(big.recv(), 5)
            code = None
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if getattr(exc, "rcvd", None) else getattr(exc, "code", None)
        check(code == 1009, f"an oversized frame closes with 1009 (message too big), got {code}")

    # Subscribe first (pull mode, from the earliest message), then produce.
    async with websockets.connect(url(f"/ws/v2/consumer/{TOPIC}/sub", pullMode="true", subscriptionInitialPosition="Earliest", negativeAckRedeliveryDelay=0)) as consumer:
        check(await refused(url(f"/ws/v2/consumer/{TOPIC}/sub")) == 409, "second exclusive consumer must give 409")

        async with websockets.connect(url(f"/ws/v2/producer/{TOPIC}")) as producer:
            ids = []
            for i in range(3):
                frame = {"payload": base64.b64encode(f"m{i}".encode()).decode(), "context": f"c{i}",
                         "key": f"k{i}", "properties": {"n": str(i)}, "eventTime": "2024-05-01T10:00:00.5+02:00"}
                await producer.send(json.dumps(frame))
                receipt = await recv_json(producer)
                check(receipt["result"] == "ok", f"receipt ok: {receipt}")
                check(receipt["context"] == f"c{i}", "context echoed")
                check(receipt["errorCode"] == 0 and receipt["schemaVersion"] == 0, "primitive fields always present")
                fields = varints(base64.b64decode(receipt["messageId"]))
                check(1 in fields and 2 in fields, "messageId is MessageIdData with ledgerId and entryId")
                ids.append(receipt["messageId"])
            check(len(set(ids)) == 3, "distinct message ids")

            await producer.send(json.dumps({"payload": "not base64!", "context": "bad"}))
            receipt = await recv_json(producer)
            check(receipt["result"] == "send-error:7" and receipt["context"] == "bad", f"bad payload: {receipt}")
            check("messageId" not in receipt and "errorMsg" in receipt, "error receipt shape")
            await producer.send("{not json")
            receipt = await recv_json(producer)
            check(receipt["result"] == "send-error:3" and "context" not in receipt, f"bad JSON: {receipt}")

        # Pull mode: nothing without permits.
        check(await nothing_within(consumer, 0.3), "pull mode delivers nothing before a permit")
        await consumer.send(json.dumps({"type": "permit", "permitMessages": 2}))
        got = [await recv_json(consumer), await recv_json(consumer)]
        check(await nothing_within(consumer, 0.3), "only as many messages as permits")
        first = got[0]
        check(base64.b64decode(first["payload"]) == b"m0", "payload base64")
        check(first["key"] == "k0" and first["properties"] == {"n": "0"}, "key and properties")
        check(ISO_WITH_OFFSET.match(first["publishTime"]), f"publishTime with offset: {first['publishTime']}")
        check(ISO_WITH_OFFSET.match(first["eventTime"]), "eventTime with offset")
        check(first["redeliveryCount"] == 0, "redeliveryCount present")
        check(first["messageId"] == ids[0], "consumer sees the receipt's id")

        # Ack the first, nack the second: it comes back with a count once permitted.
        await consumer.send(json.dumps({"messageId": got[0]["messageId"]}))
        await consumer.send(json.dumps({"type": "negativeAcknowledge", "messageId": got[1]["messageId"]}))
        await consumer.send(json.dumps({"type": "permit", "permitMessages": 2}))
        again = [await recv_json(consumer), await recv_json(consumer)]
        redelivered = [m for m in again if m["messageId"] == got[1]["messageId"]]
        # An Exclusive subscription: Pulsar counts redeliveries on shared subscriptions only.
        check(len(redelivered) == 1 and redelivered[0]["redeliveryCount"] == 0, f"nack redelivers, uncounted on Exclusive: {again}")

        await consumer.send(json.dumps({"type": "isEndOfTopic"}))
        reply = await recv_json(consumer)
        check(reply == {"endOfTopic": False}, f"isEndOfTopic answers a JSON boolean: {reply}")

    # Reader: window of one; any frame frees the slot; start after a given id (exclusive).
    async with websockets.connect(url(f"/ws/v2/reader/{TOPIC}", messageId="earliest", receiverQueueSize=1)) as reader:
        m = await recv_json(reader)
        check(m["messageId"] == ids[0], "reader from earliest")
        check(await nothing_within(reader, 0.3), "reader window of one")
        await reader.send(json.dumps({"messageId": m["messageId"]}))
        check((await recv_json(reader))["messageId"] == ids[1], "a frame frees the reader's slot")
    start = ids[0].replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    async with websockets.connect(url(f"/ws/v2/reader/{TOPIC}", messageId=start)) as reader:
        check((await recv_json(reader))["messageId"] == ids[1], "reader start id is exclusive")
    # Pulsar 4 checks the id before the reader handler runs (400); older brokers answered 500.
    check(await refused(url(f"/ws/v2/reader/{TOPIC}", messageId="garbage")) == 400, "bad reader start gives 400")

    print(f"pulsar-ws emulator: {checks} checks passed with python websockets {websockets.__version__}")


asyncio.run(main())
