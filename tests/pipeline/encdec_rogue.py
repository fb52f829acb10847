#!/usr/bin/env python3
"""encdec_rogue.py - a hostile peer for tests/pipeline/encdec-dist.test.sh:
connects to the decoder's daemon over TLS with the certificate NAME, says
Hello and waits for its Job (to learn the job id). Then, by MODE:

  shape (the default): sends one encoder output for step 0, micro-batch 0
    of the wrong shape (72 x 31 fp32 values; the job takes 72 x 32);
  stall: sends a valid encoder output for step 0, micro-batch 0 (72 x 32
    zeros, fp32) and then nothing but heartbeats (every 0.2 s): a daemon
    whose connection lives while its work is stuck. It stops when the
    daemon closes the connection (at most 120 s).

Prints what happened; exit 0 when it got as far as sending, 3 when the
daemon closed the connection before a Job.

usage: encdec_rogue.py CERTDIR NAME PORT [shape|stall]
"""
import os, socket, struct, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rogue_peer import crc32c, field, frame, join, varint


certdir, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "shape"

sock, job_id = join(certdir, name, port)
rows, cols = (72, 31) if mode == "shape" else (72, 32)
payload = bytes(rows * cols * 4)
tensor = (field(1, 0, job_id) + field(4, 0, 1) + field(5, 0, 1) + field(6, 2, varint(rows) + varint(cols)) +
          field(7, 2, b"fp32") + field(9, 0, len(payload)))
if mode == "stall":
    # version-1 codec metadata of fp32 dense (kernels/codec/codec.c, write_meta)
    n = rows * cols * 4
    meta = b"NBCD" + bytes([1, 0, 0, 0]) + struct.pack("<IIIIII", rows, cols, 0, 0, 0, 0) + struct.pack("<QQQ", 0, n, n)
    tensor += field(8, 2, meta)
header = field(1, 0, len(payload)) + varint(2 << 3 | 5) + struct.pack("<I", crc32c(payload)) + field(11, 2, tensor)
sock.sendall(frame(header, payload))
print("sent a %d x %d encoder output to job %d" % (rows, cols, job_id))
sys.stdout.flush()
if mode == "stall":
    sock.settimeout(0.2)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                break
        except socket.timeout:
            pass
        except OSError:
            break
        sock.sendall(frame(field(18, 2, field(1, 0, time.monotonic_ns()))))
    print("closed by the daemon" if time.monotonic() < end else "still open after 120 s")
    sys.exit(0)
try:
    while sock.recv(4096):
        pass
except OSError:
    pass
