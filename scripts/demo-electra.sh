#!/usr/bin/env bash
# make demo-electra: multi-generator ELECTRA on one machine across three
# daemons over mutually authenticated TLS (docs/electra.md, "Across
# daemons"). Two generator daemons, one on the GPL-3 text and one on the
# Apache-2.0 text every Debian machine has (stand-ins for two languages or
# two clusters' private data), each with its own model, seed and optimizer,
# send corrupted byte sequences (token IDs + one replaced bit per token) to
# the discriminator's daemon, which learns to tell replaced bytes from
# original ones (config/electra/discriminator.yaml, generator-gpl.yaml,
# generator-apache.yaml). One progress line every 10 steps with both
# generators' MLM losses and the discriminator's loss and accuracy; then the
# same job in one process (nebula-electra, config/electra/single-process.yaml)
# and a comparison of the two discriminators' weights: identical.
#   NB_BUILD   build directory holding bin/ (default: build)
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
# The configs point at build/demo-electra (relative to config/electra/).
work=build/demo-electra
for b in nebulad nebulactl nebula-electra nebula-tokenize; do
  [ -x "$bin/$b" ] || { echo "demo-electra: $bin/$b is missing; run make first" >&2; exit 1; }
done
for port in 7410 7411 7412; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo-electra: port $port on 127.0.0.1 is in use (another demo still running?)" >&2; exit 1
  fi
done
mkdir -p "$work"
rm -rf "$work/run"
mkdir -p "$work/run"
for pair in GPL-3:gpl3 Apache-2.0:apache2; do
  text=/usr/share/common-licenses/${pair%%:*}
  [ -r "$text" ] || { echo "demo-electra: $text is missing (package base-files)" >&2; exit 1; }
  "$bin/nebula-tokenize" "$text" "$work/${pair##*:}.tok"
done
[ -f "$work/certs/apache.pem" ] || bash scripts/gen-certs.sh "$work/certs" disc gpl apache >/dev/null
rm -f "$work/discriminator-dist.weights"

pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
: > "$work/run/disc.log" # exists before the follower below opens it
"$bin/nebulad" --config config/electra/discriminator.yaml > "$work/run/disc.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config config/electra/generator-gpl.yaml > "$work/run/gpl.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config config/electra/generator-apache.yaml > "$work/run/apache.log" 2>&1 & pids+=($!)

# Follow the discriminator's daemon: its log carries the progress lines.
tail -n +1 -f "$work/run/disc.log" --pid "${pids[0]}" &
tailer=$!
status=1
for _ in $(seq 1 1800); do
  if grep -q "job done" "$work/run/disc.log"; then status=0; break; fi
  if grep -q "job failed" "$work/run/disc.log" || ! kill -0 "${pids[0]}" 2>/dev/null; then break; fi
  sleep 0.2
done
sleep 0.3
kill "$tailer" 2>/dev/null || true
if [ $status -ne 0 ]; then
  echo "demo-electra: the job did not finish; logs in $work/run/" >&2
  tail -n 5 "$work/run/gpl.log" "$work/run/apache.log" >&2
  exit 1
fi
echo
"$bin/nebulactl" --socket "$work/run/disc.sock" status
for s in disc gpl apache; do
  "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
echo "demo-electra: every daemon stopped; now the same job in one process (nebula-electra)"
"$bin/nebula-electra" --config config/electra/single-process.yaml | tail -n 2
if cmp -s "$work/discriminator.weights" "$work/discriminator-dist.weights"; then
  echo "demo-electra: the discriminator trained across three daemons equals the single-process one, bit for bit"
else
  echo "demo-electra: the two discriminators' weights differ" >&2
  exit 1
fi
