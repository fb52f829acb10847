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
