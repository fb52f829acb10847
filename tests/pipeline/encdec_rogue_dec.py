#!/usr/bin/env python3
"""encdec_rogue_dec.py - a stuck decoder's daemon for
tests/pipeline/encdec-dist.test.sh: listens on 127.0.0.1:PORT over TLS with
the certificate NAME, accepts one connection, says Hello as a coordinator,
sends a Job of an encoder-decoder job with the digest DIGEST (the encoder's
own, so that it runs) and then nothing but heartbeats (every 0.2 s): a
daemon whose connection lives while its work is stuck. It counts the
tensors it gets and stops when the peer closes the connection (at most
120 s). Exit 0 when the peer closed it, 1 otherwise.

usage: encdec_rogue_dec.py CERTDIR NAME PORT DIGEST
"""
import os, socket, ssl, struct, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rogue_peer import field, fields, frame, recv_exact, varint


certdir, name, port, digest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("%s/%s.pem" % (certdir, name), "%s/%s.key" % (certdir, name))
ctx.load_verify_locations("%s/ca.pem" % certdir)
ctx.verify_mode = ssl.CERT_REQUIRED
lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", port))
lsock.listen(1)
print("listening", flush=True)
lsock.settimeout(120)
raw, _ = lsock.accept()
sock = ctx.wrap_socket(raw, server_side=True)
hello = field(1, 0, 2) + field(2, 2, name.encode()) + field(3, 0, 1)  # protocol 2, role coordinator
sock.sendall(frame(field(10, 2, hello)))
job = field(1, 0, 4242) + field(4, 0, 5) + field(7, 0, 4) + field(11, 2, digest.encode())
sock.sendall(frame(field(19, 2, job)))
print("sent the job", flush=True)
sock.settimeout(0.2)
tensors, closed, end, buf = 0, False, time.monotonic() + 120, b""
while time.monotonic() < end and not closed:
    try:
        chunk = sock.recv(65536)
        if not chunk:
            closed = True
        buf += chunk
    except socket.timeout:
        pass
    except OSError:
        closed = True
    while len(buf) >= 8:  # count the Tensor frames (Frame field 11) that came whole
        hlen = struct.unpack(">I", buf[4:8])[0]
        if len(buf) < 8 + hlen:
            break
        plen, tensor = 0, False
        for num, v in fields(buf[8:8 + hlen]):
            if num == 1:
                plen = v
            elif num == 11:
                tensor = True
        if len(buf) < 8 + hlen + plen:
            break
        tensors += tensor
        buf = buf[8 + hlen + plen:]
    if not closed:
        try:
            sock.sendall(frame(field(18, 2, field(1, 0, time.monotonic_ns()))))
        except OSError:
            closed = True
print("got %d tensors; %s" % (tensors, "closed by the peer" if closed else "still open after 120 s"))
sys.exit(0 if closed else 1)
