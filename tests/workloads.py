"""Accounting workloads with ground truths the code under test does not produce.

Each is a Python program (run as `PY -c CODE ARGS...`) that prints its truth on its last line of
output. The truths come from the job itself: each process's own getrusage(RUSAGE_SELF) or CPU
clock (not a figure aggregated by wait4(), which is what the fallback reports), or an allocation
of a known size. The behaviour tests (tests/behaviour/test_accounting.py) bound the record
against them; bench/accuracy.py prints the error of each backend against the same truths.
"""

from __future__ import annotations

MIB = 1 << 20

# Short-lived children, each burning user or system CPU until its own CPU clock says so, then
# printing its own getrusage(RUSAGE_SELF); the parent adds its own. Prints "user system".
# Argument: how many children (half of each kind).
SHORT_LIVED_CPU = r'''
import os, resource, subprocess, sys
BURNER = """
import os, resource, sys, time
zero = os.open("/dev/zero", os.O_RDONLY)
# more user time than system time: a record with the two swapped is told apart
end = time.process_time() + (0.3 if sys.argv[1] == "user" else 0.12)
while time.process_time() < end:
    if sys.argv[1] == "user":
        sum(range(2000))
    else:  # the kernel zeroes 1 MiB per read: system time
        os.read(zero, 1 << 20)
me = resource.getrusage(resource.RUSAGE_SELF)
print(me.ru_utime, me.ru_stime)
"""
user = system = 0.0
for i in range(int(sys.argv[1])):
    out = subprocess.run([sys.executable, "-c", BURNER, "user" if i % 2 == 0 else "sys"],
                         check=True, capture_output=True, text=True).stdout
    u, s = map(float, out.split())
    user, system = user + u, system + s
me = resource.getrusage(resource.RUSAGE_SELF)
print(user + me.ru_utime, system + me.ru_stime)
'''

# Resident memory before an allocation, as a range: its anonymous part (which a cgroup charges
# to the job for sure) and all of it (shared library pages included, which a cgroup charges to
# whoever read them first, maybe another cgroup).
RSS = '''
def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssAnon"].split()[0]) * 1024, int(status["VmRSS"].split()[0]) * 1024
'''

# One process touches N MiB. Truth: "low high", its anonymous / whole RSS before, plus N MiB.
ALLOCATION = RSS + r'''
import sys
low, high = rss()
block = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print(low + len(block), high + len(block))
'''

# 1.4 s in (past the fallback's early samples, between its regular ones at 1 and 2 s), two
# children touch 150 MiB each and hold it together for 0.2 s. Truth: what was resident at once,
# "low high" as for ALLOCATION: the parent's RSS and 2 x 150 MiB (the children's copies of the
# parent are shared pages).
BURST = RSS + r'''
import os, time
time.sleep(1.4)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        block = bytearray(150 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # hold it until both have it
        time.sleep(0.2)
        os._exit(0)
    kids.append(pid)
os.read(ready_r, 1); os.read(ready_r, 1)
os.write(go_w, b"xx")
for pid in kids:
    os.waitpid(pid, 0)
low, high = rss()
print(low + 2 * (150 << 20), high + 2 * (150 << 20))
'''

# A double-forked, setsid'd daemon burns 0.5 s of CPU and writes its own CPU clock; the main
# process waits for it. Truth: the daemon's own clock plus the main process's own
# RUSAGE_SELF + RUSAGE_CHILDREN (its children are only the short-lived intermediate forks;
# wait4() never sees the daemon). Argument: the daemon's result file.
DAEMON = r'''
import os, resource, sys, time
done = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        open(done + ".tmp", "w").write(str(time.process_time()))
        os.rename(done + ".tmp", done)
    os._exit(0)
while not os.path.exists(done):
    time.sleep(0.05)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(float(open(done).read()) + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)
'''
