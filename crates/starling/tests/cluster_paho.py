"""paho-mqtt across two Starling cluster nodes: an MQTT 5 subscriber on one
node, an MQTT 5 publisher on another; QoS 1 messages with user properties (in
order, a key repeated), a message expiry interval, content type, response
topic and correlation data arrive with them, in order, once each.
Usage: cluster_paho.py SUB_PORT PUB_PORT. Run by tests/cluster.rs.
Exits 0 and prints OK on success, prints FAIL: why otherwise. Every wait is
bounded."""
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SUB_PORT, PUB_PORT = int(sys.argv[1]), int(sys.argv[2])
WAIT = 10
N = 20
EXPIRY = 120
USER_PROPERTIES = [("k1", "v1"), ("k2", "v2"), ("k1", "again")]


def fail(why):
    print(f"FAIL: {why}")
    sys.stdout.flush()
    sys.exit(1)


def client(client_id, on_message=None):
    connected = threading.Event()
    subscribed = threading.Event()
    result = {}

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code.value
        connected.set()

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        result["granted"] = [rc.value for rc in reason_codes]
        subscribed.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    if on_message:
        c.on_message = on_message
    port = SUB_PORT if on_message else PUB_PORT
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(WAIT):
        fail(f"{client_id}: no CONNACK from port {port}")
    if result["rc"] != 0:
        fail(f"{client_id}: refused with {result['rc']}")
    return c, subscribed, result


received = queue.Queue()
sub, subscribed, sub_result = client("paho-sub", lambda c, u, msg: received.put(msg))
sub.subscribe("paho/#", qos=1)
if not subscribed.wait(WAIT):
    fail("no SUBACK")
if sub_result["granted"] != [1]:
    fail(f"granted {sub_result['granted']}, expected [1]")
pub, _, _ = client("paho-pub")

# The subscription reaches the publisher's node asynchronously: probe until
# one probe crosses, then let the others in flight arrive.
deadline = time.monotonic() + WAIT
while True:
    if time.monotonic() > deadline:
        fail(f"no probe crossed from port {PUB_PORT} to port {SUB_PORT} within {WAIT} s")
    pub.publish("paho/probe", b"probe", qos=0)
    try:
        if received.get(timeout=0.05).topic == "paho/probe":
            break
    except queue.Empty:
        pass

props = Properties(PacketTypes.PUBLISH)
props.UserProperty = list(USER_PROPERTIES)
props.MessageExpiryInterval = EXPIRY
props.ContentType = "text/plain"
props.ResponseTopic = "paho/reply"
props.CorrelationData = b"\x00\x01corr"
for i in range(N):
    info = pub.publish("paho/data", f"m{i}".encode(), qos=1, properties=props)
    info.wait_for_publish(WAIT)
    if not info.is_published():
        fail(f"message {i} not acknowledged within {WAIT} s")

got = []
deadline = time.monotonic() + WAIT
while len(got) < N:
    left = deadline - time.monotonic()
    if left <= 0:
        fail(f"only {len(got)} of {N} messages arrived: {[m.payload for m in got]}")
    try:
        m = received.get(timeout=left)
    except queue.Empty:
        continue
    if m.topic != "paho/probe":
        got.append(m)

payloads = [m.payload.decode() for m in got]
if payloads != [f"m{i}" for i in range(N)]:
    fail(f"payloads out of order or wrong: {payloads}")
for m in got:
    p = m.properties
    if m.topic != "paho/data" or m.qos != 1:
        fail(f"topic {m.topic} QoS {m.qos}")
    user = [tuple(x) for x in getattr(p, "UserProperty", [])]
    if user != USER_PROPERTIES:
        fail(f"user properties {user}, expected {USER_PROPERTIES} (in order)")
    expiry = getattr(p, "MessageExpiryInterval", None)
    if expiry is None or not 0 < expiry <= EXPIRY:
        fail(f"message expiry interval {expiry}, expected 1..{EXPIRY}")
    if getattr(p, "ContentType", None) != "text/plain":
        fail(f"content type {getattr(p, 'ContentType', None)}")
    if getattr(p, "ResponseTopic", None) != "paho/reply":
        fail(f"response topic {getattr(p, 'ResponseTopic', None)}")
    if getattr(p, "CorrelationData", None) != b"\x00\x01corr":
        fail(f"correlation data {getattr(p, 'CorrelationData', None)}")

# Nothing more (no copies); probes still in flight are ignored.
while True:
    try:
        extra = received.get(timeout=0.3)
    except queue.Empty:
        break
    if extra.topic != "paho/probe":
        fail(f"an extra message: {extra.topic} {extra.payload}")

for c in (pub, sub):
    c.disconnect()
    c.loop_stop()
print("OK")
