"""Issue 11 item 3: a client floods masked 125-byte WebSocket pings and never
reads. Prints the server's VmRSS before, at its peak and after, how many bytes
the server took, and when it closed the connection (None: it stopped reading
instead, so the flood stalled in the kernel's buffers).

    python3 tools/chatbench/bench/pingflood.py HOST PORT SERVER_PID
"""
import socket, os, sys, time, base64, struct
host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
s = socket.create_connection((host, port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /_parlor/client/v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parlor.v1\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head: head += s.recv(1)
assert b" 101 " in head.split(b"\r\n")[0], head
mask = os.urandom(4); payload = os.urandom(125)
masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
frame = bytes([0x89, 0x80 | 125]) + mask + masked
batch = frame * 512
start = rss(); peak = start; t0 = time.time(); sent = 0; closed_at = None
s.setblocking(False)
while time.time() - t0 < 9:
    try:
        n = s.send(batch); sent += n
    except BlockingIOError:
        time.sleep(0.001)
    except (BrokenPipeError, ConnectionResetError):
        closed_at = time.time() - t0; break
    peak = max(peak, rss())
time.sleep(0.5)
print({"rss_start_kib": start, "rss_peak_kib": max(peak, rss()), "rss_end_kib": rss(), "bytes_sent": sent, "closed_after_s": closed_at})
