"""rogue_peer.py - what the hostile-peer scripts of the pipeline tests
(electra_rogue.py, encdec_rogue.py) share: Nebula's frame encoding by hand
(protobuf varints and fields, CRC32C, the frame prefix) and joining a
daemon over TLS as a stage that waits for its Job."""
import socket, ssl, struct, sys


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, data):
    return varint(num << 3 | wire) + (varint(data) if wire == 0 else varint(len(data)) + data if wire == 2 else data)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(header, payload=b""):
    return b"NB\x01\x00" + struct.pack(">I", len(header)) + header + payload


def fields(buf):
    """(number, value) of every field of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = read_varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            ln, i = read_varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wire)
        yield num, v


def read_varint(buf, i):
    v = s = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << s
        s += 7
        if not b & 0x80:
            return v, i


def recv_exact(sock, k):
    out = b""
    while len(out) < k:
        chunk = sock.recv(k - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def join(certdir, name, port):
    """Connects to the daemon on 127.0.0.1:port with the certificate NAME,
    says Hello as a stage and waits for the Job. Returns (sock, job_id);
    exits 3 when the daemon closes the connection before a Job."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain("%s/%s.pem" % (certdir, name), "%s/%s.key" % (certdir, name))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20))
    hello = field(1, 0, 2) + field(2, 2, name.encode()) + field(3, 0, 2)  # protocol 2, role stage
    sock.sendall(frame(field(10, 2, hello)))
    job_id = None
    try:
        while job_id is None:
            prefix = recv_exact(sock, 8)
            hdr = recv_exact(sock, struct.unpack(">I", prefix[4:])[0])
            plen = 0
            for num, v in fields(hdr):
                if num == 1:
                    plen = v
                elif num == 19:  # Job
                    job_id = dict(fields(v)).get(1)
            recv_exact(sock, plen)
    except (EOFError, OSError) as e:
        print("closed before a job: %s" % e)
        sys.exit(3)
    return sock, job_id
