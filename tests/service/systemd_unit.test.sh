#!/usr/bin/env bash
# The systemd unit keeps the hardening the operations guide promises and
# passes `systemd-analyze verify` (with ExecStart pointed at the built
# binary). Skips (77) where systemd-analyze is missing. Its exposure score:
# systemd_security.test.sh.
set -u
. tests/support/assert.sh
B=${NB_BUILD:-build}/bin
unit=scripts/systemd/nebulad@.service
for k in Type=notify WatchdogSec= Restart=on-failure RestartPreventExitStatus=78 NoNewPrivileges=yes \
         ProtectSystem=strict ProtectHome=yes PrivateTmp=yes ReadWritePaths= RuntimeDirectory=nebula \
         RestrictAddressFamilies= 'CapabilityBoundingSet=$' 'ExecReload=/bin/kill -HUP' '#   DeviceAllow=/dev/nvidia'; do
  grep -q "^$k" "$unit" || fail "unit lacks $k"
done
command -v systemd-analyze >/dev/null || nb_skip "systemd-analyze not installed; unit not verified"
nb_work_init systemd-unit
sed "s|/usr/local/bin/nebulad|$(realpath "$B/nebulad")|g" "$unit" > "$work/nebulad@test.service"
out=$(systemd-analyze verify --man=no "$work/nebulad@test.service" 2>&1); rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "systemd-analyze verify exit $rc"
if grep -q 'nebulad@test' <<<"$out"; then fail "verify reported problems"; fi
echo "systemd unit ok"
