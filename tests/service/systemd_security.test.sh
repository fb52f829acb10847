#!/usr/bin/env bash
# The systemd unit's `systemd-analyze security` exposure stays at or below
# 2.0. Skips (77) where systemd-analyze or its offline mode (systemd 250 and
# later) is missing; where the mode exists, any failure to score the unit
# fails the test.
set -u
. tests/support/assert.sh
B=${NB_BUILD:-build}/bin
unit=scripts/systemd/nebulad@.service
command -v systemd-analyze >/dev/null || nb_skip "systemd-analyze not installed; exposure not checked"
systemd-analyze security --help 2>/dev/null | grep -q -- '--offline' ||
  nb_skip "systemd-analyze security has no --offline mode here; exposure not checked"
nb_work_init systemd-security
sed "s|/usr/local/bin/nebulad|$(realpath "$B/nebulad")|g" "$unit" > "$work/nebulad@test.service"
sec=$(systemd-analyze security --offline=yes --no-pager "$work/nebulad@test.service" 2>&1) ||
  fail "systemd-analyze security exit $?: $sec"
level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$sec")
echo "exposure $level"
[ -n "$level" ] || fail "no exposure level in: $sec"
awk -v l="$level" 'BEGIN{exit !(l <= 2.0)}' || fail "exposure $level above 2.0"
echo "systemd unit exposure ok"
