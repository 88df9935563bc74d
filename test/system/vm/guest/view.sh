# Guest side of test/system/nvme-kernel-view.test.ts: the Linux NVMe/TCP host
# reads a recovery view the hub exports, then writes into it (a writable test
# view) and reads its writes back. The host side knows what every range must
# hold and compares the sums reported here.
#   ADDR PORT NQN   the view's NVMe/TCP endpoint; OPTS extra connect options
#   PATTERN         file with deterministic data (the source of the writes)
#   CHECKS          "name:off:len ..." ranges to read before writing: S_name
#   WRITES          "name:devoff:patoff:len:bs ..." O_DIRECT writes of PATTERN
#                   slices: W_name (sha256 of what was written), R_name (read
#                   back at once), RR_name (re-read after flush, caches dropped)
# Discovery first: LISTED (1 if the discovery log at ADDR:PORT has an entry for
# NQN), DISC_TRADDR/DISC_TRSVCID of that entry.
# FULL_BEFORE / FULL_AFTER: sha256 of the whole namespace before the writes and
# at the end; DEV_SIZE, LBA_SIZE, RO and CTRL_* describe what the kernel saw.
# Then, after disconnecting: REP-MARK released (the host deletes the view); the
# discovery log is polled until the entry is gone (UNLISTED=1, at most
# GONE_WAIT s), and only then one Connect is tried: GONE=1 if it is refused.
# (Probing with Connects while the delete runs would race it: the 6.1 host
# ignores a connection closed under a controller it is still setting up or
# deleting, and waits out its 60 s admin command timeout.)
set -u

# the entry for NQN in the discovery log as "traddr trsvcid", empty if none
discovered() {
  rep_discover "$ADDR" "$PORT" > /dev/null || return 1
  awk -v nqn="$NQN" '
    $1 == "trsvcid:" { svc = $2 }
    $1 == "subnqn:" { hit = ($2 == nqn) }
    $1 == "traddr:" && hit { print $2, svc; exit }' /tmp/rep-discover.txt
}
entry=$(discovered) || rep_fail "nvme discover failed"
rep_result LISTED "$([ -n "$entry" ] && echo 1 || echo 0)"
rep_result DISC_TRADDR "${entry% *}"
rep_result DISC_TRSVCID "${entry#* }"

rep_connect "$ADDR" "$PORT" "$NQN" "${OPTS:-}" || rep_fail "connect failed"
for a in subsysnqn serial model transport state; do
  rep_result "CTRL_$a" "$(rep_ctrl_attr "$REP_CTRL" "$a" | tr ' ' '_')"
done
size=$(blockdev --getsize64 "$REP_DEV")
rep_result DEV_SIZE "$size"
rep_result LBA_SIZE "$(blockdev --getss "$REP_DEV")"
rep_result RO "$(blockdev --getro "$REP_DEV")"
rep_mark connected

rep_result FULL_BEFORE "$(rep_sum "$REP_DEV" 0 "$size" 1048576)"
for c in $CHECKS; do
  old=$IFS; IFS=:; set -- $c; IFS=$old
  rep_result "S_$1" "$(rep_sum "$REP_DEV" "$2" "$3")"
done

bad=0
for w in $WRITES; do
  old=$IFS; IFS=:; set -- $w; IFS=$old
  want=$(rep_sum "$PATTERN" "$3" "$4")
  rep_put "$PATTERN" "$3" "$REP_DEV" "$2" "$4" "$5" || { rep_log "$1: write failed"; bad=$((bad + 1)); }
  got=$(rep_sum "$REP_DEV" "$2" "$4" "$5")
  rep_result "W_$1" "$want"
  rep_result "R_$1" "$got"
  [ "$want" = "$got" ] || { rep_log "$1: read back differs"; bad=$((bad + 1)); }
done

sync && blockdev --flushbufs "$REP_DEV" && dd if=/dev/null of="$REP_DEV" conv=fsync,notrunc status=none ||
  { rep_log "flush failed"; bad=$((bad + 1)); }
echo 3 > /proc/sys/vm/drop_caches
for w in $WRITES; do
  old=$IFS; IFS=:; set -- $w; IFS=$old
  rep_result "RR_$1" "$(rep_sum "$REP_DEV" "$2" "$4" "$5")"
done
rep_result FULL_AFTER "$(rep_sum "$REP_DEV" 0 "$size" 1048576)"
rep_result IO_ERRORS "$(dmesg | grep -ciE 'I/O error|blk_update_request|critical medium')"

rep_disconnect
[ "$bad" = 0 ] || rep_fail "$bad data check(s) failed"

rep_mark released
unlisted=0; n=0
while [ "$n" -lt $((${GONE_WAIT:-30} * 2)) ]; do
  entry=$(discovered) || rep_fail "nvme discover failed after the release"
  [ -n "$entry" ] || { unlisted=1; break; }
  n=$((n + 1)); sleep 0.5
done
rep_result UNLISTED "$unlisted"
[ "$unlisted" = 1 ] || rep_fail "the view is still in the discovery log ${GONE_WAIT:-30} s after the release"
REP_CTRL=
if REP_CONNECT_TIMEOUT=30 rep_connect "$ADDR" "$PORT" "$NQN"; then gone=0; rep_disconnect
elif [ -n "$REP_CTRL" ]; then gone=0; rep_disconnect # connected, but no namespace
else gone=1; fi
rep_result GONE "$gone"
[ "$gone" = 1 ] || rep_fail "the view's subsystem still accepts connections after the delete"
rep_pass "view $NQN read, written, and gone after the delete"
