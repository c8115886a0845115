"""Round trips through pymemcache against an ixkvs server.

Usage: pymemcache_roundtrip.py HOST PORT

Run by tools/tests/kvs_interop.rs from inside a network namespace, with the
server on the other end of a veth pair. Every result is compared with what
the memcached text protocol promises; the script goes on after a mismatch,
prints every one of them, and exits 1 if there was any (2 on an exception
that stopped it). On success it prints "pymemcache: all N checks passed".
"""

import sys
import time
import traceback

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheError

HOST = sys.argv[1]
PORT = int(sys.argv[2])

failures = []
checks = 0


def show(v):
    """A short, printable form of a value."""
    if isinstance(v, (bytes, bytearray)) and len(v) > 64:
        return "<%d bytes %r...>" % (len(v), bytes(v[:32]))
    if isinstance(v, dict):
        return "{%s}" % ", ".join("%r: %s" % (k, show(x)) for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return "[%s]" % ", ".join(show(x) for x in v)
    return repr(v)


def check(what, got, expected):
    """Records a failure if got != expected."""
    global checks
    checks += 1
    if got != expected:
        failures.append("%s: expected %s, got %s" % (what, show(expected), show(got)))


def value_of(size, seed):
    """size bytes using every byte value, so values hold \\r\\n and NULs."""
    return bytes(((i * 31 + seed) & 0xFF) for i in range(size))


class FlagsSerde:
    """Stores (bytes, flags) pairs, so flags make the round trip too."""

    def serialize(self, key, value):
        return value[0], value[1]

    def deserialize(self, key, value, flags):
        return value, flags


def connect():
    """A client that waits for replies; retries until the server answers."""
    deadline = time.monotonic() + 30
    while True:
        c = Client((HOST, PORT), default_noreply=False, connect_timeout=5, timeout=60)
        try:
            c.version()
            return c
        except (OSError, MemcacheError) as e:
            c.close()
            if time.monotonic() > deadline:
                raise
            print("connecting to %s:%d: %s; retrying" % (HOST, PORT, e))
            time.sleep(0.2)


def main():
    c = connect()
    version = c.version()
    check("version starts with ixkvs-", version.startswith(b"ixkvs-"), True)
    check("flush_all", c.flush_all(), True)

    # set/get/delete of values of many sizes, up to 500 KiB (segments of
    # many TCP segments each way).
    sizes = [0, 1, 2, 100, 1023, 1460, 1461, 4096, 9000, 65535, 65536, 100000, 262144, 512000]
    for i, size in enumerate(sizes):
        key = "size-%d" % size
        v = value_of(size, i)
        check("set %s" % key, c.set(key, v), True)
        check("get %s" % key, c.get(key), v)
    check("get_many of every size",
          c.get_many(["size-%d" % s for s in sizes] + ["absent"]),
          {"size-%d" % s: value_of(s, i) for i, s in enumerate(sizes)})
    for size in sizes[::2]:
        check("delete size-%d" % size, c.delete("size-%d" % size), True)
        check("delete size-%d again" % size, c.delete("size-%d" % size), False)
        check("get deleted size-%d" % size, c.get("size-%d" % size), None)
    check("get missing with default", c.get("absent", default=b"dflt"), b"dflt")

    # add/replace/append/prepend.
    check("add absent", c.add("ar", b"first"), True)
    check("add present", c.add("ar", b"second"), False)
    check("after add", c.get("ar"), b"first")
    check("replace present", c.replace("ar", b"third"), True)
    check("replace absent", c.replace("ar-absent", b"x"), False)
    check("get replace absent", c.get("ar-absent"), None)
    check("after replace", c.get("ar"), b"third")
    check("append", c.append("ar", b">>"), True)
    check("prepend", c.prepend("ar", b"<<"), True)
    check("append absent", c.append("ar-absent", b"x"), False)
    check("after append and prepend", c.get("ar"), b"<<third>>")
    big = value_of(300000, 9)
    check("add big", c.add("ar-big", big), True)
    check("replace big", c.replace("ar-big", big[::-1]), True)
    check("get replaced big", c.get("ar-big"), big[::-1])

    # incr/decr: 64-bit unsigned, wrapping up, stopping at 0 down.
    check("set counter", c.set("n", b"10"), True)
    check("incr", c.incr("n", 5), 15)
    check("decr", c.decr("n", 3), 12)
    check("decr below zero", c.decr("n", 100), 0)
    check("set counter high", c.set("n", b"18446744073709551615"), True)
    check("incr wraps", c.incr("n", 2), 1)
    check("incr absent", c.incr("n-absent", 1), None)
    check("decr absent", c.decr("n-absent", 1), None)
    check("incr large delta", c.incr("n", 18446744073709551614), 18446744073709551615)
    check("get counter", c.get("n"), b"18446744073709551615")
    check("set non-numeric", c.set("nn", b"abc"), True)
    try:
        c.incr("nn", 1)
        failures.append("incr of a non-numeric value: expected MemcacheClientError")
    except MemcacheClientError as e:
        check("incr non-numeric error", b"non-numeric" in str(e).encode(), True)
    check("still serving after an error", c.get("nn"), b"abc")

    # gets/cas.
    v1, v2, v3 = value_of(5000, 1), value_of(70000, 2), value_of(10, 3)
    check("set for cas", c.set("cas", v1), True)
    got, token = c.gets("cas")
    check("gets value", got, v1)
    check("cas with the right token", c.cas("cas", v2, token), True)
    check("cas with a stale token", c.cas("cas", v3, token), False)
    got, token2 = c.gets("cas")
    check("gets after cas", got, v2)
    check("cas token changed", token2 != token, True)
    check("cas on an absent key", c.cas("cas-absent", v3, token2), None)
    check("cas again", c.cas("cas", v3, token2), True)
    check("get after cas", c.get("cas"), v3)
    check("gets absent", c.gets("cas-absent"), (None, None))
    many = c.gets_many(["cas", "n", "cas-absent"])
    check("gets_many keys", sorted(many), ["cas", "n"])
    check("gets_many values", [many[k][0] for k in ["cas", "n"]],
          [v3, b"18446744073709551615"])
    check("gets_many tokens differ", many["cas"][1] != many["n"][1], True)

    # set_many/get_many: the sets go out pipelined in one write.
    batch = {"m-%03d" % i: value_of(i * 997 % 20000, i) for i in range(200)}
    check("set_many", c.set_many(batch), [])
    check("get_many", c.get_many(list(batch)), batch)
    large = {"ml-%d" % i: value_of(150000 + i, i) for i in range(4)}
    check("set_many large", c.set_many(large), [])
    check("get_many large", c.get_many(list(large) + ["absent"]), large)
    # A get line of ~140 KB (3,000 keys of 46 bytes): longer than ixkvs
    # holds whole, so it serves the keys as they arrive.
    wide = {"wide-mget-key-%s-%05d" % ("x" * 20, i): value_of(i % 300, i) for i in range(3000)}
    check("set_many wide", c.set_many(wide), [])
    check("get_many wide", c.get_many(list(wide) + ["absent-%d" % i for i in range(50)]), wide)
    wide_gets = c.gets_many(list(wide))
    check("gets_many wide", {k: v for k, (v, _) in wide_gets.items()}, wide)
    check("delete_many", c.delete_many(["m-%03d" % i for i in range(100)]), True)
    left = c.get_many(list(batch))
    check("get_many after delete_many", sorted(left), sorted(list(batch)[100:]))

    # Flags, through a client whose values are (bytes, flags).
    fc = Client((HOST, PORT), default_noreply=False, serde=FlagsSerde(), timeout=60)
    for flags in [0, 1, 0xDEADBEEF, 0xFFFFFFFF]:
        key = "flags-%d" % flags
        check("set with flags %d" % flags, fc.set(key, (b"v", flags)), True)
        check("get with flags %d" % flags, fc.get(key), (b"v", flags))

    # Another connection sees what this one stored.
    other = connect()
    check("other connection sees the value", other.get("ar"), b"<<third>>")
    check("other connection stores", other.set("shared", value_of(40000, 4)), True)
    check("this connection sees it", c.get("shared"), value_of(40000, 4))

    # noreply: nothing comes back, the next request still gets its answer.
    check("set noreply", c.set("nr", b"quiet", noreply=True), True)
    check("add noreply (refused)", c.add("nr", b"loud", noreply=True), True)
    check("delete absent noreply", c.delete("nr-absent", noreply=True), True)
    check("get after noreply", c.get("nr"), b"quiet")

    # touch and expiry (memcached time has one-second steps).
    check("touch present", c.touch("nr", 3600), True)
    check("touch absent", c.touch("nr-absent", 10), False)
    check("set expiring", c.set("exp", b"soon", expire=1), True)
    check("set lasting", c.set("exp-long", b"later", expire=3600), True)
    check("get before expiry", c.get("exp"), b"soon")
    time.sleep(2.5)
    check("get after expiry", c.get("exp"), None)
    check("get lasting", c.get("exp-long"), b"later")

    # stats: every value but version is an integer.
    stats = c.stats()
    check("stats version", stats.get(b"version"), version)
    for name in [b"curr_items", b"cmd_get", b"cmd_set", b"get_hits", b"get_misses",
                 b"curr_connections", b"uptime"]:
        check("stats has %r" % name, name in stats, True)
    odd = sorted(k for k, v in stats.items() if k != b"version" and not isinstance(v, int))
    check("stats that are not integers", odd, [])
    check("curr_connections counts ours", stats.get(b"curr_connections", 0) >= 2, True)

    # quit closes the connection; the client reconnects for the next call.
    c.quit()
    check("get after quit and reconnect", c.get("ar"), b"<<third>>")

    check("flush_all at the end", c.flush_all(), True)
    check("get after flush_all", c.get_many(["ar", "n", "shared"]), {})
    check("version still answers", c.version(), version)


try:
    main()
except Exception:
    traceback.print_exc()
    for f in failures:
        print("MISMATCH " + f)
    print("pymemcache: stopped by an exception after %d checks" % checks)
    sys.exit(2)

for f in failures:
    print("MISMATCH " + f)
if failures:
    print("pymemcache: %d of %d checks failed" % (len(failures), checks))
    sys.exit(1)
print("pymemcache: all %d checks passed" % checks)
