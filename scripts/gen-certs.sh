#!/usr/bin/env bash
# gen-certs.sh - makes a deployment CA and one certificate per daemon with the
# openssl CLI, for mutually authenticated TLS between Nebula daemons.
#
# usage: scripts/gen-certs.sh OUTDIR NAME [NAME...]
#   OUTDIR/ca.pem, ca.key         the CA (keep ca.key offline in production)
#   OUTDIR/NAME.pem, NAME.key     certificate for daemon NAME: CN=NAME and
#                                 subjectAltName DNS:NAME, EC P-256, signed by the CA
# An existing ca.pem/ca.key in OUTDIR is reused, so running again with a new
# NAME adds a daemon and running again with an old NAME rotates its
# certificate (daemons re-read certificate files for every new connection).
# Environment: NB_CERT_DAYS (default 365), NB_CA_DAYS (default 3650).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUTDIR NAME [NAME...]" >&2
  exit 2
fi
out=$1; shift
days=${NB_CERT_DAYS:-365}
ca_days=${NB_CA_DAYS:-3650}
mkdir -p "$out"
umask 077
if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca.key" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
    -subj "/CN=nebula-ca-$(date +%s)-$$" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.pem" 2>/dev/null
fi
for name in "$@"; do
  case "$name" in
    ''|*[!A-Za-z0-9._-]*) echo "$0: bad daemon name '$name' (letters, digits, '.', '-', '_': the names a config accepts)" >&2; exit 2 ;;
  esac
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/$name.key" 2>/dev/null
  openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$out/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$name" > "$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile "$out/$name.ext" \
    -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
done
chmod 644 "$out"/*.pem
