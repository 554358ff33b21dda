"""Object churn: dicts, lists, strings and JSON round trips, on four threads."""
import json
import threading

def build(n):
    d = {str(i): [i] * 10 for i in range(n)}
    s = json.dumps(d)
    assert json.loads(s) == d
    return len(s)

def work(seed):
    out = []
    for i in range(60000):
        out.append(("k%d" % (i * seed)) * (1 + i % 7))
        if len(out) > 5000:
            del out[: len(out) // 2]
    return sum(map(len, out))

build(200000)
threads = [threading.Thread(target=work, args=(t + 1,)) for t in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ok")
