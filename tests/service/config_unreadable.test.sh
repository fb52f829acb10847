#!/usr/bin/env bash
# nebulad --check-config on a config file it may not read: exit 78 and the
# file named with "Permission denied". Root reads any file, so as root the
# check runs as the unprivileged uid 65534 (setpriv); without setpriv it is
# skipped (77). A readable copy of the file, checked the same way, must give
# another reason: the refusal comes from the file's mode, not from the path.
set -u
. tests/support/assert.sh
D=${NB_BUILD:-build}/bin/nebulad
[ -x "$D" ] || fail "no $D"
D=$(realpath "$D")
as_user=()
if [ "$(id -u)" -eq 0 ]; then
  command -v setpriv >/dev/null || nb_skip "root without setpriv: no uid that a file mode can refuse"
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
nb_work_init config-unreadable
chmod 711 "$work"   # searchable by the unprivileged uid, not listable
printf 'name: x\n' > "$work/noread.yaml"
chmod 000 "$work/noread.yaml"
out=$("${as_user[@]}" "$D" --check-config "$work/noread.yaml" 2>&1); rc=$?
[ $rc -eq 78 ] || fail "unreadable file: exit $rc, want 78 ($out)"
[ "$out" = "$work/noread.yaml: cannot read config file: Permission denied" ] || fail "unreadable file: '$out'"
chmod 644 "$work/noread.yaml"
out=$("${as_user[@]}" "$D" --check-config "$work/noread.yaml" 2>&1); rc=$?
[ $rc -eq 78 ] || fail "readable file: exit $rc, want 78 ($out)"
[[ $out != *"Permission denied"* ]] || fail "a readable file refused for its permissions: '$out'"
echo "unreadable config ok"
