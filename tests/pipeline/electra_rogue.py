#!/usr/bin/env python3
"""electra_rogue.py - a hostile peer for tests/pipeline/electra-dist.test.sh:
connects to the discriminator's daemon over TLS with the certificate NAME,
says Hello, waits for its Job (to learn the job id) and sends one ELECTRA
batch of N x T byte tokens for step 0 as generator INDEX, whose token at
position 5 of sequence 0 is BAD_ID. Prints what happened; exit 0 when it got
as far as sending, 3 when the daemon closed the connection before a Job.

usage: electra_rogue.py CERTDIR NAME PORT INDEX N T BAD_ID
"""
import os, struct, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rogue_peer import crc32c, field, frame, join, varint


certdir, name, port, index, n, t, bad = sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:8])

sock, job_id = join(certdir, name, port)
tok = n * t
ids = [(k * 7) % 200 for k in range(tok)]
ids[5] = bad
width = 1 if bad < 256 else 2
bits = bytearray((tok + 7) // 8)
batch = (b"NBEL" + struct.pack("<HBBIQII", 1, width, 0, index, 0, n, t) +
         b"".join(i.to_bytes(width, "little") for i in ids) + bytes(bits))
tensor = (field(1, 0, job_id) + field(4, 0, 3) + field(5, 0, 5) + field(6, 2, varint(len(batch))) +
          field(7, 2, b"electra-wire") + field(9, 0, len(batch)) + field(10, 0, index))
header = field(1, 0, len(batch)) + varint(2 << 3 | 5) + struct.pack("<I", crc32c(batch)) + field(11, 2, tensor)
sock.sendall(frame(header, batch))
print("sent a batch of %d x %d tokens as generator %d to job %d" % (n, t, index, job_id))
try:
    while sock.recv(4096):
        pass
except OSError:
    pass
