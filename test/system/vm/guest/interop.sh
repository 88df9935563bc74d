# Guest side of test/system/nvme-kernel.test.ts: the Linux NVMe/TCP host
# against a target at $ADDR:$PORT (subsystem $NQN).
#   DISCOVER=1   read the discovery log first; DISCOVERED=1 and DISCOVER_TRADDR/_TRSVCID
#                of the entry for $NQN
#   OPTS         extra connect options (nr_io_queues=2, hdr_digest, ...)
#   PATTERN      file with deterministic data
#   CASES        "name:kind:devoff:len:patoff:bs ..." on non-overlapping ranges; kind:
#     direct     O_DIRECT write of PATTERN[patoff, +len) at devoff, bs per command
#     buffered   the same through the page cache (any alignment), then sync + flushbufs
#     zero       direct write, then NVMe Write Zeroes (nvme-cli) over the middle half
#     trim       direct write, then a block-layer discard (DSM deallocate) over the
#                middle half; expects zeroes there (the target's trim reads zeroes)
# Every case is read back and compared (sha256); after a flush every range is
# read again with the page cache dropped. Results: W_name (sha256 of what the
# range must hold), R_name (read back at once), RR_name (re-read at the end).
set -u
if [ "${DISCOVER:-0}" = 1 ]; then
  rep_discover "$ADDR" "$PORT" || rep_fail "nvme discover failed"
  # nvme-cli prints one block per entry: ... trsvcid, subnqn, traddr ...
  entry=$(awk -v nqn="$NQN" '
    $1 == "trsvcid:" { svc = $2 }
    $1 == "subnqn:" { hit = ($2 == nqn) }
    $1 == "traddr:" && hit { print $2, svc; exit }' /tmp/rep-discover.txt)
  rep_result DISCOVERED "$([ -n "$entry" ] && echo 1 || echo 0)"
  rep_result DISCOVER_TRADDR "${entry% *}"
  rep_result DISCOVER_TRSVCID "${entry#* }"
fi

rep_connect "$ADDR" "$PORT" "$NQN" "${OPTS:-}" || rep_fail "connect failed"
for a in queue_count sqsize cntlid state subsysnqn serial model transport; do
  rep_result "CTRL_$a" "$(rep_ctrl_attr "$REP_CTRL" "$a" | tr ' ' '_')"
done
rep_result DEV_SIZE "$(blockdev --getsize64 "$REP_DEV")"
rep_result LBA_SIZE "$(blockdev --getss "$REP_DEV")"
rep_mark connected

# $1 kind $2 file $3 off $4 len $5 bs: sha256 of a range, O_DIRECT unless buffered
case_sum() {
  if [ "$1" = buffered ]; then
    dd if="$2" bs="$5" skip="$3" count="$4" iflag=skip_bytes,count_bytes status=none | sha256sum | cut -d' ' -f1
  else
    rep_sum "$2" "$3" "$4" "$5"
  fi
}

# $1 kind $2 devoff $3 len $4 patoff $5 bs: perform the case, print the expected sha256
run_case() {
  dd if="$PATTERN" of=/tmp/expect bs=65536 skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none
  case "$1" in
    buffered)
      dd if="$PATTERN" of="$REP_DEV" bs="$5" skip="$4" seek="$2" count="$3" \
        iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none || return 1
      sync && blockdev --flushbufs "$REP_DEV" && echo 3 > /proc/sys/vm/drop_caches || return 1 ;;
    direct) rep_put "$PATTERN" "$4" "$REP_DEV" "$2" "$3" "$5" || return 1 ;;
    zero|trim)
      rep_put "$PATTERN" "$4" "$REP_DEV" "$2" "$3" "$5" || return 1
      _zo=$(($3 / 4)); _zl=$(($3 / 2))
      dd if=/dev/zero of=/tmp/expect bs=512 seek="$_zo" count="$_zl" oflag=seek_bytes iflag=count_bytes \
        conv=notrunc status=none
      if [ "$1" = zero ]; then
        nvme write-zeroes "$REP_DEV" -s $((($2 + _zo) / 512)) -c $((_zl / 512 - 1)) >&2 || return 1
      else
        blkdiscard -o $(($2 + _zo)) -l "$_zl" "$REP_DEV" || return 1
      fi ;;
    *) rep_log "unknown case kind $1"; return 1 ;;
  esac
  sha256sum < /tmp/expect | cut -d' ' -f1
}

bad=0
for c in $CASES; do
  IFS=: read -r name kind doff len poff bs <<EOF
$c
EOF
  want=$(run_case "$kind" "$doff" "$len" "$poff" "$bs") || { rep_log "$name: $kind failed"; bad=$((bad + 1)); }
  got=$(case_sum "$kind" "$REP_DEV" "$doff" "$len" "$bs")
  rep_result "W_$name" "$want"
  rep_result "R_$name" "$got"
  [ "$want" = "$got" ] || { rep_log "$name: read back differs"; bad=$((bad + 1)); }
done

# flush: write back anything cached, then fsync the block device (an NVMe
# Flush when the namespace reports a volatile write cache); field 16 of the
# path device's stat is the number of flush requests
path_stat=$(ls /sys/class/nvme/$REP_CTRL/nvme*n*/stat 2>/dev/null | head -n 1)
f0=$(awk '{ print $16 }' "$path_stat" 2>/dev/null)
sync && blockdev --flushbufs "$REP_DEV" && dd if=/dev/null of="$REP_DEV" conv=fsync,notrunc status=none ||
  { rep_log "flush failed"; bad=$((bad + 1)); }
f1=$(awk '{ print $16 }' "$path_stat" 2>/dev/null)
rep_result FLUSH_CMDS "$(( ${f1:-0} - ${f0:-0} ))"
rep_result WRITE_CACHE "$(tr ' ' '_' < "/sys/block/${REP_DEV##*/}/queue/write_cache")"

echo 3 > /proc/sys/vm/drop_caches
for c in $CASES; do
  IFS=: read -r name kind doff len poff bs <<EOF
$c
EOF
  rep_result "RR_$name" "$(case_sum "$kind" "$REP_DEV" "$doff" "$len" "$bs")"
done

rep_disconnect
[ "$bad" = 0 ] || rep_fail "$bad data check(s) failed"
rep_pass "interop $NQN ${OPTS:-}"
