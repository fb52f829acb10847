#!/usr/bin/env python3
"""encdec_rogue.py - a hostile peer for tests/pipeline/encdec-dist.test.sh:
connects to the decoder's daemon over TLS with the certificate NAME, says
Hello, waits for its Job (to learn the job id) and sends one encoder output
for step 0, micro-batch 0 of the wrong shape (72 x 31 fp32 values; the job
takes 72 x 32). Prints what happened; exit 0 when it got as far as
sending, 3 when the daemon closed the connection before a Job.

usage: encdec_rogue.py CERTDIR NAME PORT
"""
import os, struct, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rogue_peer import crc32c, field, frame, join, varint


certdir, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

sock, job_id = join(certdir, name, port)
rows, cols = 72, 31
payload = bytes(rows * cols * 4)
tensor = (field(1, 0, job_id) + field(4, 0, 1) + field(5, 0, 1) + field(6, 2, varint(rows) + varint(cols)) +
          field(7, 2, b"fp32") + field(9, 0, len(payload)))
header = field(1, 0, len(payload)) + varint(2 << 3 | 5) + struct.pack("<I", crc32c(payload)) + field(11, 2, tensor)
sock.sendall(frame(header, payload))
print("sent a %d x %d encoder output to job %d" % (rows, cols, job_id))
try:
    while sock.recv(4096):
        pass
except OSError:
    pass
