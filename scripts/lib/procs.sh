# Shell helpers for the scripts that start local servers (bench/cluster.sh,
# bench/interest.sh, scripts/cluster-demo.sh). Source it; needs python3.

# N free ports on 127.0.0.1, all different (their sockets held together).
free_ports() {
    python3 -c '
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

# Waits (at most 60 s) until FILE has a line matching PATTERN; exits the
# script with the file's end otherwise.
wait_log() {
    local file=$1 pattern=$2
    for _ in $(seq 600); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file" >&2
    tail -20 "$file" >&2
    exit 1
}
