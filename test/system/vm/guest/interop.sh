# Guest side of test/system/nvme-kernel.test.ts: the Linux NVMe/TCP host
# against a target at $ADDR:$PORT (subsystem $NQN).
#   DISCOVER=1   read the discovery log first (REP-RESULT DISCOVERED=1 if $NQN is listed)
#   OPTS         extra connect options (nr_io_queues=2, hdr_digest, ...)
#   PATTERN      file with deterministic data; CASES: "name:devoff:len:patoff:bs ..."
# Every case writes a slice of PATTERN with O_DIRECT, reads it back and
# compares sha256; after a flush every range is read again with the page cache
# dropped. Results: W_name (sha of the data written), R_name, RR_name.
set -u
if [ "${DISCOVER:-0}" = 1 ]; then
  rep_discover "$ADDR" "$PORT" || rep_fail "nvme discover failed"
  if grep -q "subnqn: *$NQN\$" /tmp/rep-discover.txt; then rep_result DISCOVERED 1; else rep_result DISCOVERED 0; fi
  rep_result DISCOVER_TRADDR "$(sed -n 's/^traddr: *//p' /tmp/rep-discover.txt | head -n 1)"
fi

rep_connect "$ADDR" "$PORT" "$NQN" "${OPTS:-}" || rep_fail "connect failed"
for a in queue_count sqsize cntlid state subsysnqn serial model transport; do
  rep_result "CTRL_$a" "$(rep_ctrl_attr "$REP_CTRL" "$a" | tr ' ' '_')"
done
rep_result DEV_SIZE "$(blockdev --getsize64 "$REP_DEV")"
rep_result LBA_SIZE "$(blockdev --getss "$REP_DEV")"
rep_mark connected

bad=0
for c in $CASES; do
  IFS=: read -r name doff len poff bs <<EOF
$c
EOF
  want=$(rep_sum "$PATTERN" "$poff" "$len")
  rep_put "$PATTERN" "$poff" "$REP_DEV" "$doff" "$len" "$bs" || { rep_log "$name: write failed"; bad=$((bad + 1)); }
  got=$(rep_sum "$REP_DEV" "$doff" "$len" "$bs")
  rep_result "W_$name" "$want"
  rep_result "R_$name" "$got"
  [ "$want" = "$got" ] || { rep_log "$name: read back differs"; bad=$((bad + 1)); }
done

# flush: write back anything cached, then fsync the block device (an NVMe
# Flush when the namespace reports a volatile write cache)
path_stat=$(ls /sys/class/nvme/$REP_CTRL/nvme*n*/stat 2>/dev/null | head -n 1)
f0=$(awk '{ print $16 }' "$path_stat" 2>/dev/null)
sync && blockdev --flushbufs "$REP_DEV" && dd if=/dev/null of="$REP_DEV" conv=fsync,notrunc status=none ||
  { rep_log "flush failed"; bad=$((bad + 1)); }
f1=$(awk '{ print $16 }' "$path_stat" 2>/dev/null)
rep_result FLUSH_CMDS "$(( ${f1:-0} - ${f0:-0} ))"
rep_result WRITE_CACHE "$(tr ' ' '_' < "/sys/block/${REP_DEV##*/}/queue/write_cache")"

echo 3 > /proc/sys/vm/drop_caches
for c in $CASES; do
  IFS=: read -r name doff len poff bs <<EOF
$c
EOF
  rep_result "RR_$name" "$(rep_sum "$REP_DEV" "$doff" "$len" "$bs")"
done

rep_disconnect
[ "$bad" = 0 ] || rep_fail "$bad data check(s) failed"
rep_pass "interop $NQN ${OPTS:-}"
