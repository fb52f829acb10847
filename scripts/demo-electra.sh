#!/usr/bin/env bash
# make demo-electra: multi-generator ELECTRA on one machine, in one process
# (the single-process reference; docs/electra.md). Two generators, one on
# the GPL-3 text and one on the Apache-2.0 text every Debian machine has
# (stand-ins for two languages), each with its own model, seed and
# optimizer, feed corrupted byte sequences to one discriminator that learns
# to tell replaced bytes from original ones (config/electra/
# single-process.yaml). One progress line every 10 steps with both
# generators' MLM losses and the discriminator's loss and accuracy, then
# the discriminator's weights in build/demo-electra/discriminator.weights.
#   NB_BUILD   build directory holding bin/ (default: build)
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
# The config points at build/demo-electra (relative to config/electra/).
work=build/demo-electra
for b in nebula-electra nebula-tokenize; do
  [ -x "$bin/$b" ] || { echo "demo-electra: $bin/$b is missing; run make first" >&2; exit 1; }
done
mkdir -p "$work"
for pair in GPL-3:gpl3 Apache-2.0:apache2; do
  text=/usr/share/common-licenses/${pair%%:*}
  [ -r "$text" ] || { echo "demo-electra: $text is missing (package base-files)" >&2; exit 1; }
  "$bin/nebula-tokenize" "$text" "$work/${pair##*:}.tok"
done
"$bin/nebula-electra" --config config/electra/single-process.yaml
