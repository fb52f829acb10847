# pipeline.sh - shell helpers shared by the tests and benchmarks that run a
# real pipeline job (coordinator "coord", stage daemons "a", "b", ...):
# sourced, never run. Paths in the YAML files are relative to the work
# directory, as the daemons resolve them against their config file's folder.

# nb_pipe_prepare WORK BIN: certificates for coord, a and b in WORK/certs and
# the GPL-3 text as byte tokens in WORK/data.tok. Returns non-zero on failure.
nb_pipe_prepare() {
  local work=$1 bin=$2
  bash scripts/gen-certs.sh "$work/certs" coord a b >/dev/null || return 1
  "$bin/nebula-tokenize" /usr/share/common-licenses/GPL-3 "$work/data.tok" >/dev/null || return 1
}

# nb_stage_yaml FILE NAME LISTEN COORD_ADDR HB_INTERVAL HB_TIMEOUT [LINE...]
# Writes a stage daemon's configuration: TLS files certs/NAME.*, the token
# file data.tok, status socket run/NAME.sock, then each extra LINE as is
# (e.g. "checkpoint_dir: run/a-weights").
nb_stage_yaml() {
  local file=$1 name=$2 listen=$3 coord=$4 hb_interval=$5 hb_timeout=$6
  shift 6
  {
    cat <<YAML
name: $name
role: stage
listen: "$listen"
tls: {cert: certs/$name.pem, key: certs/$name.key, ca: certs/ca.pem}
coordinator: {address: "$coord", name: coord}
data: data.tok
status_socket: run/$name.sock
heartbeat_interval_s: $hb_interval
heartbeat_timeout_s: $hb_timeout
YAML
    local line
    for line in "$@"; do echo "$line"; done
  } > "$file"
}

# nb_port_base SPAN: prints a port P such that P .. P+SPAN-1 are free on
# this host now (no socket bound to them), chosen at random in 10000 .. 32000:
# below the kernel's ephemeral range (32768-60999 by default), where the
# outgoing connections of any process, the test's own daemons included, could
# take a port between two runs of a daemon. Daemons of one test that listen
# on consecutive ports take them from here.
nb_port_base() {
  local span=$1 p try
  for try in $(seq 1 100); do
    p=$(( 10000 + (RANDOM % ((32000 - 10000 - span) / 10)) * 10 ))
    if ! command -v ss >/dev/null ||
       [ "$(ss -Htan "( sport >= :$p and sport < :$((p + span)) )" 2>/dev/null | wc -l)" = 0 ]; then
      echo "$p"
      return 0
    fi
  done
  echo "$p"
}
