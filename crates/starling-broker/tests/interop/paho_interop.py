#!/usr/bin/env python3
"""paho-mqtt (2.x) clients for Starling's interoperability tests.

Run by crates/starling-broker/tests/interop.rs against an in-process broker:

    paho_interop.py SCENARIO PORT VERSION [ARGS...]

VERSION is "3.1", "3.1.1" or "5". Every scenario exits 0 on success. On failure it
prints "FAIL: <reason>" to stderr and exits 1. Every wait is bounded by WAIT
seconds, and the whole script by an alarm, so it can never hang.

A scenario that reconnects with a client id it just disconnected prints
"DETACHED <client id>" and waits for "GO" on stdin: the Rust test answers once
the broker has detached that connection.

Scenarios:
  pubsub        two clients publish at QoS 0/1/2 to themselves and to each other
  properties    (v5) user properties, content type, response topic, correlation
                data, payload format, message expiry, subscription identifier,
                topic alias and an assigned client identifier pass through
  retained      retained messages reach later subscribers with the retain flag
  retained-limit  against a broker with max-retained-messages = 2: a third
                retained topic is refused (v5 QoS 1: PUBACK 0x97, not
                delivered) or delivered without being retained (3.1.1, QoS 0)
  session       a persistent session resumes (session present) with its queue
  session-limit against a broker with max-sessions = 2: a third client id is
                refused (v5: CONNACK 0x97; 3.x: return code 3), a held one resumes
  will-victim   TOPIC PAYLOAD: connects with a will, prints CONNECTED, waits to be killed
  will-watch    TOPIC PAYLOAD: subscribes, prints SUBSCRIBED, expects the will
  will-graceful a will is not published after a normal DISCONNECT
  takeover      a persistent connection taking over a clean one starts afresh
  publish       PREFIX: publishes "paho-q<N>" to PREFIX/q<N> for N = 0, 1, 2
  subscribe     FILTER COUNT: subscribes at QoS 2, prints SUBSCRIBED, then one
                line "q<qos> r<retain> <topic> <payload>" per message, COUNT times
"""

import os
import queue
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
WAIT = 15.0
VERSIONS = {"3.1": mqtt.MQTTv31, "3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(message, name, default=None):
    p = message.properties
    if p is None or not hasattr(p, name):
        return default
    return getattr(p, name)


class Peer:
    """A paho client with blocking, time-bounded helpers."""

    def __init__(self, port, version, client_id, clean_session=True):
        self.port = port
        self.version = version
        self.v5 = version == mqtt.MQTTv5
        self.name = client_id or "<empty id>"
        kwargs = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": client_id,
            "protocol": version,
        }
        if not self.v5:
            kwargs["clean_session"] = clean_session
        self.c = mqtt.Client(**kwargs)
        # loop_start's thread reconnects after an unexpected disconnection; put
        # that beyond the script's lifetime so every disconnection is final.
        self.c.reconnect_delay_set(min_delay=int(WAIT * 10), max_delay=int(WAIT * 10))
        self.cond = threading.Condition()
        self.connack = None
        self.disconnected = None
        self.subacks = {}
        self.unsubacks = {}
        self.published = {}
        self.messages = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.messages.put(m)

    # Callbacks (paho's network thread).
    def _on_connect(self, c, u, flags, rc, properties):
        with self.cond:
            self.connack = (flags, rc, properties)
            self.cond.notify_all()

    def _on_disconnect(self, c, u, flags, rc, properties):
        with self.cond:
            self.disconnected = rc
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, codes, properties):
        with self.cond:
            self.subacks[mid] = codes
            self.cond.notify_all()

    def _on_unsubscribe(self, c, u, mid, codes, properties):
        with self.cond:
            self.unsubacks[mid] = codes
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, properties):
        with self.cond:
            self.published[mid] = rc
            self.cond.notify_all()

    def _wait(self, pred, what):
        with self.cond:
            if not self.cond.wait_for(pred, WAIT):
                raise Failure(f"{self.name}: timed out waiting for {what}")

    # Operations.
    def will(self, topic, payload, qos=1, retain=False, properties=None):
        self.c.will_set(topic, payload, qos=qos, retain=retain, properties=properties)

    def connect(self, clean_start=True, expiry=None, expect_present=False):
        """Connects; checks the CONNACK reason code and session present flag.
        Returns the CONNACK properties (None for 3.1.1)."""
        flags, code, properties = self.connack_of(clean_start, expiry)
        check(
            not code.is_failure and code.value == 0,
            f"{self.name}: CONNACK reason code {code.value:#04x} ({code})",
        )
        check(
            flags.session_present == expect_present,
            f"{self.name}: session present is {flags.session_present}, expected {expect_present}",
        )
        return properties

    def connack_of(self, clean_start=True, expiry=None):
        """Connects and returns the CONNACK (flags, reason code, properties),
        whatever its reason code."""
        kwargs = {"keepalive": 30}
        if self.v5:
            kwargs["clean_start"] = clean_start
            if expiry is not None:
                kwargs["properties"] = props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
        rc = self.c.connect(HOST, self.port, **kwargs)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: connect() returned {rc}")
        self.c.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        return self.connack

    def subscribe(self, topic, qos, properties=None, **options):
        if self.v5:
            spec = (topic, SubscribeOptions(qos=qos, **options))
        else:
            spec = (topic, qos)
        rc, mid = self.c.subscribe(spec, properties=properties)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe() returned {rc}")
        self._wait(lambda: mid in self.subacks, f"SUBACK for {topic}")
        codes = self.subacks[mid]
        check(len(codes) == 1, f"{self.name}: SUBACK has {len(codes)} codes")
        check(
            not codes[0].is_failure and codes[0].value == qos,
            f"{self.name}: SUBACK for {topic} granted {codes[0].value:#04x}, expected QoS {qos}",
        )

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: unsubscribe() returned {rc}")
        self._wait(lambda: mid in self.unsubacks, f"UNSUBACK for {topic}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        """Publishes and waits for the QoS flow to complete; returns the reason code."""
        rc = self.publish_rc(topic, payload, qos, retain, properties)
        check(not rc.is_failure, f"{self.name}: publish to {topic} refused: {rc}")
        return rc

    def publish_rc(self, topic, payload, qos, retain=False, properties=None):
        """Publishes and waits for the QoS flow to complete; returns the reason
        code, a refusal included."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish() returned {info.rc}")
        self._wait(lambda: info.mid in self.published, f"the QoS {qos} flow of {topic}")
        return self.published[info.mid]

    def recv(self, what="a message"):
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.name}: timed out waiting for {what}") from None

    def expect(self, topic, payload, qos, retain=False):
        m = self.recv(f"{payload!r} on {topic}")
        got = (m.topic, m.payload, m.qos, bool(m.retain))
        want = (topic, payload, qos, retain)
        check(got == want, f"{self.name}: got (topic, payload, qos, retain) {got}, expected {want}")
        return m

    def disconnect(self, properties=None):
        self.c.disconnect(properties=properties)
        self._wait(lambda: self.disconnected is not None, "disconnection")
        self.c.loop_stop()
        check(
            self.disconnected.value == 0,
            f"{self.name}: disconnected with {self.disconnected}",
        )


def say(line):
    print(line, flush=True)


def sync_detached(client_id):
    """Asks the Rust test to wait until the broker has detached `client_id`'s
    connection (a DISCONNECT is processed asynchronously by the broker, and a
    new connection with the same id could otherwise overtake it)."""
    say(f"DETACHED {client_id}")
    line = sys.stdin.readline()
    check(line.strip() == "GO", f"expected GO on stdin, got {line!r}")


# Scenarios ------------------------------------------------------------------


def pubsub(port, version, tag):
    a = Peer(port, version, f"pubsub-a-{tag}")
    b = Peer(port, version, f"pubsub-b-{tag}")
    a.connect()
    b.connect()
    a.subscribe(f"ps/{tag}/a", 2)
    a.subscribe(f"ps/{tag}/a2", 2)
    b.subscribe(f"ps/{tag}/b", 2)
    b.subscribe(f"ps/{tag}/b/low", 1)
    for qos in (0, 1, 2):
        a.publish(f"ps/{tag}/a", f"self-q{qos}".encode(), qos)
        a.expect(f"ps/{tag}/a", f"self-q{qos}".encode(), qos)
        a.publish(f"ps/{tag}/b", f"other-q{qos}".encode(), qos)
        b.expect(f"ps/{tag}/b", f"other-q{qos}".encode(), qos)
        b.publish(f"ps/{tag}/a", f"from-b-q{qos}".encode(), qos)
        a.expect(f"ps/{tag}/a", f"from-b-q{qos}".encode(), qos)
    # Delivery at the lower of the publish QoS and the granted QoS.
    a.publish(f"ps/{tag}/b/low", b"downgraded", 2)
    b.expect(f"ps/{tag}/b/low", b"downgraded", 1)
    # A binary payload of every byte value, unchanged.
    blob = bytes(range(256)) * 64
    a.publish(f"ps/{tag}/b", blob, 1)
    b.expect(f"ps/{tag}/b", blob, 1)
    # After UNSUBSCRIBE nothing more arrives on that filter: the next message a
    # gets, published after it on the same connection, is the one on a2.
    a.unsubscribe(f"ps/{tag}/a")
    rc = a.publish(f"ps/{tag}/a", b"after-unsubscribe", 1)
    if a.v5:
        check(rc.value == 0x10, f"PUBACK with no subscriber: {rc} ({rc.value:#04x}), expected 0x10")
    a.publish(f"ps/{tag}/a2", b"marker", 1)
    a.expect(f"ps/{tag}/a2", b"marker", 1)
    a.disconnect()
    b.disconnect()


def properties(port, version, tag):
    check(version == mqtt.MQTTv5, "properties needs MQTT 5")
    responder = Peer(port, version, f"responder-{tag}")
    requester = Peer(port, version, f"requester-{tag}")
    ack_props = responder.connect()
    requester.connect()
    check(
        ack_props is None or not hasattr(ack_props, "AssignedClientIdentifier"),
        "CONNACK assigned an identifier to a client that had one",
    )
    responder.subscribe(
        f"req/{tag}/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
    )
    requester.subscribe(f"reply/{tag}", 2)

    user = [("trace", "abc"), ("trace", "def"), ("ключ", "значение ✓")]
    correlation = b"\x00corr\xff\x01"
    request = props(
        PacketTypes.PUBLISH,
        UserProperty=user,
        ContentType="application/json; charset=utf-8",
        ResponseTopic=f"reply/{tag}",
        CorrelationData=correlation,
        PayloadFormatIndicator=1,
        MessageExpiryInterval=120,
    )
    requester.publish(f"req/{tag}/x", b'{"n": 1}', 1, properties=request)
    m = responder.expect(f"req/{tag}/x", b'{"n": 1}', 1)
    check(prop(m, "UserProperty") == user, f"user properties {prop(m, 'UserProperty')!r}, expected {user!r}")
    check(
        prop(m, "ContentType") == "application/json; charset=utf-8",
        f"content type {prop(m, 'ContentType')!r}",
    )
    check(prop(m, "ResponseTopic") == f"reply/{tag}", f"response topic {prop(m, 'ResponseTopic')!r}")
    check(prop(m, "CorrelationData") == correlation, f"correlation data {prop(m, 'CorrelationData')!r}")
    check(prop(m, "PayloadFormatIndicator") == 1, f"payload format {prop(m, 'PayloadFormatIndicator')!r}")
    expiry = prop(m, "MessageExpiryInterval")
    check(expiry is not None and 100 <= expiry <= 120, f"message expiry {expiry!r}, expected 100..=120")
    check(prop(m, "SubscriptionIdentifier") == [42], f"subscription id {prop(m, 'SubscriptionIdentifier')!r}")

    # Request/response: answer on the response topic with the correlation data.
    reply = props(PacketTypes.PUBLISH, CorrelationData=prop(m, "CorrelationData"))
    responder.publish(prop(m, "ResponseTopic"), b"pong", 2, properties=reply)
    r = requester.expect(f"reply/{tag}", b"pong", 2)
    check(prop(r, "CorrelationData") == correlation, f"reply correlation data {prop(r, 'CorrelationData')!r}")
    check(prop(r, "UserProperty") is None, f"reply has user properties {prop(r, 'UserProperty')!r}")
    check(prop(r, "SubscriptionIdentifier") is None, "reply has a subscription identifier")

    # Topic alias: set with the first PUBLISH, then used with an empty topic.
    requester.publish(f"req/{tag}/alias", b"one", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    requester.publish("", b"two", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    responder.expect(f"req/{tag}/alias", b"one", 1)
    responder.expect(f"req/{tag}/alias", b"two", 1)

    # An empty client id gets one assigned.
    anon = Peer(port, version, "")
    ack_props = anon.connect()
    assigned = getattr(ack_props, "AssignedClientIdentifier", None)
    check(assigned, "no Assigned Client Identifier for an empty client id")
    anon.disconnect()

    responder.disconnect()
    requester.disconnect()


def retained(port, version, tag):
    p = Peer(port, version, f"ret-pub-{tag}")
    p.connect()
    p.publish(f"ret/{tag}/a", b"kept-a", 1, retain=True)
    p.publish(f"ret/{tag}/b", b"kept-b", 2, retain=True)

    s = Peer(port, version, f"ret-sub-{tag}")
    s.connect()
    s.subscribe(f"ret/{tag}/+", 2)
    got = sorted((m.topic, m.payload, m.qos, bool(m.retain)) for m in (s.recv(), s.recv()))
    want = [(f"ret/{tag}/a", b"kept-a", 1, True), (f"ret/{tag}/b", b"kept-b", 2, True)]
    check(got == want, f"retained at subscribe: {got}, expected {want}")

    # A live message to an existing subscription arrives without the retain flag.
    p.publish(f"ret/{tag}/a", b"live-a", 1, retain=True)
    s.expect(f"ret/{tag}/a", b"live-a", 1, retain=False)
    # An empty retained payload deletes the retained message, and is still delivered.
    p.publish(f"ret/{tag}/b", b"", 1, retain=True)
    s.expect(f"ret/{tag}/b", b"", 1, retain=False)

    # A later subscriber gets the replaced message, and none for the deleted topic:
    # the non-retained marker published afterwards is the next thing it gets.
    s2 = Peer(port, version, f"ret-sub2-{tag}")
    s2.connect()
    s2.subscribe(f"ret/{tag}/+", 1)
    s2.expect(f"ret/{tag}/a", b"live-a", 1, retain=True)
    p.publish(f"ret/{tag}/marker", b"marker", 1)
    s2.expect(f"ret/{tag}/marker", b"marker", 1)

    if p.v5:
        # Retain As Published keeps the flag on live messages; Retain Handling 2
        # sends nothing at subscribe time.
        s3 = Peer(port, version, f"ret-sub3-{tag}")
        s3.connect()
        s3.subscribe(f"ret/{tag}/+", 1, retainAsPublished=True, retainHandling=2)
        p.publish(f"ret/{tag}/a", b"rap", 1, retain=True)
        s3.expect(f"ret/{tag}/a", b"rap", 1, retain=True)
        s3.disconnect()
        # Clean up for other scenarios.
    p.publish(f"ret/{tag}/a", b"", 1, retain=True)
    for peer in (p, s, s2):
        peer.disconnect()


def retained_limit(port, version, tag):
    """The broker holds at most 2 retained messages."""
    t = f"rl/{tag}"
    p = Peer(port, version, f"rl-pub-{tag}")
    p.connect()
    p.publish(f"{t}/a", b"a", 1, retain=True)
    p.publish(f"{t}/b", b"b", 1, retain=True)
    s = Peer(port, version, f"rl-sub-{tag}")
    s.connect()
    s.subscribe(f"{t}/+", 1)
    got = sorted(m.topic for m in (s.recv(), s.recv()))
    check(got == [f"{t}/a", f"{t}/b"], f"retained at subscribe: {got}")

    rc = p.publish_rc(f"{t}/c", b"c", 1, retain=True)
    if p.v5:
        check(rc.value == 0x97, f"a third retained topic at QoS 1 got {rc}, expected 0x97")
    else:
        check(rc.value == 0, f"3.1.1 cannot be refused, got {rc}")
        s.expect(f"{t}/c", b"c", 1)
    # QoS 0 cannot be refused: delivered, not retained.
    p.publish(f"{t}/d", b"d", 0, retain=True)
    s.expect(f"{t}/d", b"d", 0)
    # Replacing a retained message, and clearing one, still work; the room
    # cleared takes a new topic.
    p.publish(f"{t}/a", b"a2", 1, retain=True)
    s.expect(f"{t}/a", b"a2", 1)
    p.publish(f"{t}/b", b"", 1, retain=True)
    s.expect(f"{t}/b", b"", 1)
    p.publish(f"{t}/e", b"e", 1, retain=True)
    s.expect(f"{t}/e", b"e", 1)

    later = Peer(port, version, f"rl-later-{tag}")
    later.connect()
    later.subscribe(f"{t}/+", 1)
    got = sorted((m.topic, m.payload) for m in (later.recv(), later.recv()))
    want = [(f"{t}/a", b"a2"), (f"{t}/e", b"e")]
    check(got == want, f"retained after the limit: {got}, expected {want}")
    p.publish(f"{t}/marker", b"m", 1)
    later.expect(f"{t}/marker", b"m", 1)
    for topic in ("a", "e"):
        p.publish(f"{t}/{topic}", b"", 1, retain=True)
    for peer in (p, s, later):
        peer.disconnect()


def session_limit(port, version, tag):
    """The broker holds at most 2 sessions."""
    a = Peer(port, version, f"sl-a-{tag}", clean_session=False)
    a.connect(clean_start=False, expiry=300)
    b = Peer(port, version, f"sl-b-{tag}")
    b.connect()
    c = Peer(port, version, f"sl-c-{tag}")
    flags, code, _ = c.connack_of()
    # paho reports 3.x return code 3 as "Server unavailable" (0x88).
    want = 0x97 if c.v5 else 0x88
    check(code.value == want, f"a third session got CONNACK {code}, expected {want:#04x}")
    check(not flags.session_present, "a refusal with session present")
    c.c.loop_stop()
    # A session held resumes at the limit.
    a.disconnect()
    again = Peer(port, version, f"sl-a-{tag}", clean_session=False)
    again.connect(clean_start=False, expiry=300, expect_present=True)
    again.disconnect()
    b.disconnect()


def session(port, version, tag):
    v5 = version == mqtt.MQTTv5
    cid = f"persistent-{tag}"
    topic = f"sess/{tag}"

    def client(clean):
        return Peer(port, version, cid, clean_session=clean)

    # A new persistent session: no session present.
    s = client(False)
    s.connect(clean_start=True, expiry=300, expect_present=False)
    s.subscribe(topic, 2)
    s.disconnect()

    p = Peer(port, version, f"sess-pub-{tag}")
    p.connect()
    rc = p.publish(topic, b"queued-1", 1)
    if v5:
        check(rc.value == 0, f"PUBACK for an offline subscriber: {rc}, expected success")
    p.publish(topic, b"queued-2", 2)

    # Resumed: session present, the subscription kept, the queue delivered in order.
    s = client(False)
    s.connect(clean_start=False, expiry=300, expect_present=True)
    s.expect(topic, b"queued-1", 1)
    s.expect(topic, b"queued-2", 2)
    p.publish(topic, b"live", 1)
    s.expect(topic, b"live", 1)
    if v5:
        # DISCONNECT may shorten the expiry to 0: the session ends with it.
        s.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    else:
        s.disconnect()
        sync_detached(cid)
        # Clean session discards the stored session.
        s = client(True)
        s.connect(expect_present=False)
        s.disconnect()
    sync_detached(cid)
    s = client(False)
    s.connect(clean_start=False, expiry=300, expect_present=False)
    s.disconnect()

    if v5:
        # A session with a 1 s expiry is gone 2 s after the disconnect.
        s = client(False)
        s.connect(clean_start=False, expiry=1, expect_present=True)
        s.disconnect()
        sync_detached(cid)
        time.sleep(2.0)
        s = client(False)
        s.connect(clean_start=False, expiry=0, expect_present=False)
        s.disconnect()
    p.disconnect()


def will_properties():
    return props(
        PacketTypes.WILLMESSAGE,
        UserProperty=[("why", "killed")],
        ContentType="text/plain",
    )


def will_victim(port, version, tag, topic, payload):
    v = Peer(port, version, f"victim-{tag}")
    v.will(
        topic,
        payload.encode(),
        qos=1,
        properties=will_properties() if v.v5 else None,
    )
    v.connect()
    say("CONNECTED")
    time.sleep(WAIT * 2)
    raise Failure("the victim was not killed")


def will_watch(port, version, tag, topic, payload):
    w = Peer(port, version, f"will-watch-{tag}")
    w.connect()
    w.subscribe(topic, 2)
    say("SUBSCRIBED")
    m = w.expect(topic, payload.encode(), 1)
    if w.v5:
        check(prop(m, "UserProperty") == [("why", "killed")], f"will user properties {prop(m, 'UserProperty')!r}")
        check(prop(m, "ContentType") == "text/plain", f"will content type {prop(m, 'ContentType')!r}")
    w.disconnect()


def will_graceful(port, version, tag):
    topic = f"will/{tag}/graceful"
    w = Peer(port, version, f"graceful-watch-{tag}")
    w.connect()
    w.subscribe(f"will/{tag}/#", 1)
    v = Peer(port, version, f"graceful-{tag}")
    v.will(topic, b"must not fire", qos=1)
    v.connect()
    v.disconnect()
    sync_detached(f"graceful-{tag}")
    # Same broker, later in time: the marker is the first thing w sees.
    p = Peer(port, version, f"graceful-marker-{tag}")
    p.connect()
    p.publish(f"will/{tag}/marker", b"marker", 1)
    w.expect(f"will/{tag}/marker", b"marker", 1)
    if version == mqtt.MQTTv5:
        # DISCONNECT with reason 0x04 asks for the will.
        v = Peer(port, version, f"graceful2-{tag}")
        v.will(topic, b"with-will", qos=1)
        v.connect()
        v.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
        w.expect(topic, b"with-will", 1)
        v.c.loop_stop()
    p.disconnect()
    w.disconnect()


def takeover(port, version, tag):
    """A persistent connection takes over a clean one (3.1.1 clean session 1;
    5.0 session expiry 0): the old session ended with its connection, so there
    is no session present and none of its subscriptions."""
    cid = f"takeover-{tag}"
    a = Peer(port, version, cid, clean_session=True)
    a.connect()
    a.subscribe(f"to/{tag}/old", 1)
    b = Peer(port, version, cid, clean_session=False)
    b.connect(clean_start=False, expiry=300, expect_present=False)
    a._wait(lambda: a.disconnected is not None, "the taken-over connection to close")
    if a.v5:
        check(a.disconnected.value == 0x8E, f"taken over with {a.disconnected}, expected 0x8e")
    a.c.loop_stop()
    b.subscribe(f"to/{tag}/marker", 1)
    p = Peer(port, version, f"takeover-pub-{tag}")
    p.connect()
    p.publish(f"to/{tag}/old", b"old", 1)
    p.publish(f"to/{tag}/marker", b"marker", 1)
    b.expect(f"to/{tag}/marker", b"marker", 1)
    p.disconnect()
    b.disconnect()


def publish(port, version, tag, prefix):
    p = Peer(port, version, f"paho-pub-{tag}")
    p.connect()
    for qos in (0, 1, 2):
        p.publish(f"{prefix}/q{qos}", f"paho-q{qos}".encode(), qos)
    p.disconnect()


def subscribe(port, version, tag, topic, count):
    s = Peer(port, version, f"paho-sub-{tag}")
    s.connect()
    s.subscribe(topic, 2)
    say("SUBSCRIBED")
    for _ in range(int(count)):
        m = s.recv()
        say(f"q{m.qos} r{int(m.retain)} {m.topic} {m.payload.decode()}")
    s.disconnect()


SCENARIOS = {
    "pubsub": pubsub,
    "properties": properties,
    "retained": retained,
    "retained-limit": retained_limit,
    "session": session,
    "session-limit": session_limit,
    "will-victim": will_victim,
    "will-watch": will_watch,
    "will-graceful": will_graceful,
    "takeover": takeover,
    "publish": publish,
    "subscribe": subscribe,
}


def main(argv):
    if len(argv) < 4 or argv[1] not in SCENARIOS or argv[3] not in VERSIONS:
        print(__doc__, file=sys.stderr)
        return 2
    scenario, port, version = argv[1], int(argv[2]), VERSIONS[argv[3]]
    # Short enough for MQTT 3.1 client ids (at most 23 characters).
    tag = {mqtt.MQTTv31: "v31", mqtt.MQTTv311: "v311", mqtt.MQTTv5: "v5"}[version] + f"-{os.getpid()}"
    # A hard bound on the whole run, whatever happens in paho's threads.
    def expired(*_):
        sys.stderr.write(f"FAIL: {scenario} {argv[3]}: still running after {int(WAIT * 4)} s\n")
        sys.stderr.flush()
        os._exit(3)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(WAIT * 4))
    try:
        SCENARIOS[scenario](port, version, tag, *argv[4:])
    except Failure as e:
        print(f"FAIL: {scenario} {argv[3]}: {e}", file=sys.stderr)
        return 1
    print(f"OK {scenario} {argv[3]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
