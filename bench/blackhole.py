import socket, sys, time
# A receiver that accepts connections and never answers (bench/webhook.sh).
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1000)
held = []
while True:
    c, _ = s.accept(); held.append(c)
