#!/usr/bin/env python3
"""The load of `lab/bench-serve` (run in the lab's client namespace): N SSE clients on
/v1/events, and an open-loop RATE requests a second of GET PATH for SECONDS, each on a
keep-alive connection of a pool of workers. Prints one JSON line: the latencies' p50/p90/p99/max
in ms, requests sent and failed, and the events each SSE client read."""
import http.client, json, sys, threading, time

addr, token, path, rate, seconds, sse = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
host, port = addr.split(":")
auth = {"Authorization": "Bearer " + token}
stop = threading.Event()
events = [0] * sse

def follow(i):
    c = http.client.HTTPConnection(host, int(port), timeout=seconds + 30)
    c.request("GET", "/v1/events", headers=auth)
    r = c.getresponse()
    while not stop.is_set():
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"id:"):
            events[i] += 1

for i in range(sse):
    threading.Thread(target=follow, args=(i,), daemon=True).start()
time.sleep(1)

lat, failed, lock = [], [0], threading.Lock()
WORKERS = 8
def worker(k):
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    n, t0 = 0, time.monotonic()
    per = rate / WORKERS
    while True:
        due = t0 + n / per          # open loop: the schedule does not wait for answers
        now = time.monotonic()
        if due - t0 >= seconds:
            return
        if due > now:
            time.sleep(due - now)
        s = time.perf_counter()
        try:
            c.request("GET", path, headers=auth)
            r = c.getresponse(); r.read()
            ok = r.status == 200
        except Exception:
            ok = False
            c = http.client.HTTPConnection(host, int(port), timeout=10)
        d = (time.perf_counter() - s) * 1000
        with lock:
            lat.append(d)
            if not ok:
                failed[0] += 1
        n += 1

ws = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
for w in ws: w.start()
for w in ws: w.join()
stop.set()
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None
print(json.dumps({"requests": len(lat), "failed": failed[0], "p50_ms": q(0.50), "p90_ms": q(0.90),
                  "p99_ms": q(0.99), "max_ms": round(lat[-1], 2) if lat else None,
                  "sse_clients": sse, "sse_events_min": min(events) if events else 0}))
