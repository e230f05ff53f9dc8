"""paho-mqtt with a JWT as its password: accepted with a good token, refused
with a bad one (MQTT 3.1.1 and 5). Usage: paho_jwt.py PORT GOOD BAD.
Exits 0 on success, prints FAIL: why otherwise. Every wait is bounded."""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PORT = int(sys.argv[1])
GOOD, BAD = sys.argv[2], sys.argv[3]
WAIT = 20


def connect(token, protocol):
    done = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code.value
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        result.setdefault("rc", reason_code.value)
        done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="c1", protocol=protocol)
    c.username_pw_set("u1", token)
    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    if not done.wait(WAIT):
        print("FAIL: no CONNACK")
        sys.exit(1)
    return c, result["rc"]


for protocol, refused in ((mqtt.MQTTv311, {4, 0x86}), (mqtt.MQTTv5, {0x86})):
    c, rc = connect(GOOD, protocol)
    if rc != 0:
        print(f"FAIL: good token refused with {rc} ({protocol})")
        sys.exit(1)
    info = c.publish("dev/c1/t", b"x", qos=1)
    info.wait_for_publish(WAIT)
    if not info.is_published():
        print("FAIL: allowed publish not acknowledged")
        sys.exit(1)
    c.disconnect()
    c.loop_stop()
    c, rc = connect(BAD, protocol)
    c.loop_stop()
    if rc not in refused:
        print(f"FAIL: bad token got {rc}, expected one of {refused} ({protocol})")
        sys.exit(1)
print("OK")
