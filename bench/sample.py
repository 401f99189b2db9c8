#!/usr/bin/env python3
"""Samples the machine every 100 ms until SIGINT: disk read and write rates, disk busy time, CPU
busy and iowait, one line per sample, into the file named by the first argument. For finding
whether a benchmark waits on the disk or the CPU, with BENCH_PROFILE:

    BENCH_PROFILE="python3 bench/sample.py /tmp/samples.txt" sudo -E ./bench/run.sh initial_sync

DISK (default vda) names the block device."""
import os, signal, sys, time
out = open(sys.argv[1], 'w')
stop = False
def h(*a):
    global stop; stop = True
signal.signal(signal.SIGINT, h)
def disk():
    for l in open('/proc/diskstats'):
        f = l.split()
        if f[2] == os.environ.get('DISK', 'vda'):
            return int(f[5]) * 512, int(f[9]) * 512, int(f[12])
    sys.exit("no block device %r in /proc/diskstats (set DISK)" % os.environ.get('DISK', 'vda'))
def cpu():
    f = open('/proc/stat').readline().split()[1:]
    v = list(map(int, f))
    idle = v[3] + v[4]
    return sum(v), idle, v[4]
t0 = time.time(); d0 = disk(); c0 = cpu()
while not stop:
    time.sleep(0.1)
    t = time.time(); d = disk(); c = cpu()
    dt = t - t0
    tot = c[0] - c0[0]
    out.write(f"{t:.2f} read {((d[0]-d0[0])/dt)/1e6:7.0f} MB/s write {((d[1]-d0[1])/dt)/1e6:7.0f} MB/s iobusy {(d[2]-d0[2])/dt/10:4.0f}% cpu {100*(1-(c[1]-c0[1])/max(tot,1)):4.0f}% iowait {100*(c[2]-c0[2])/max(tot,1):4.0f}%\n")
    t0, d0, c0 = t, d, c
out.close()
