# Guest side of test/system/nvme-kernel-agent-restart.test.ts: keep writing and
# verifying through the Linux NVMe/TCP host while the host test kills the
# target (kill -9) and restarts it on the same address. The kernel must ride
# it out: error recovery, reconnect every reconnect_delay, requeue in-flight
# I/O, and no I/O error reaching the application.
#   ADDR PORT NQN   the target; OPTS extra connect options (ctrl_loss_tmo, ...)
#   PATTERN         file with deterministic data
#   PLAN            "devoff:patoff:len:bs ..." rounds, in order (more than will run);
#                   each range lies inside one SLOT-byte slot (later rounds overwrite
#                   earlier ones in the same slot)
#   PRE_ROUNDS      once this many rounds are done, rep_mark running just before the
#                   next write starts (the host kills the target when it sees it)
#   POST_ROUNDS     rounds to complete after the controller is live again
#   OUTAGE_WAIT     seconds to wait for the controller to leave 'live' after the mark
# A round is one O_DIRECT write of PATTERN[patoff, +len) at devoff in bs-sized
# commands, then an O_DIRECT read-back compared by sha256. The workload runs in
# the background; this shell watches the controller state meanwhile.
# Results: ROUNDS (completed rounds; the host replays PLAN[0..ROUNDS) to build
# the expected image), BAD (failed rounds), FINAL_BAD (ranges whose last write
# does not read back at the end), T_DOWN/T_UP (uptime when the controller was
# seen leaving 'live' / live again), SPAN (rounds in flight across the outage),
# REQUEUED (kernel "requeuing I/O" lines), IO_ERRORS (kernel I/O error lines),
# identity before/after (ID0_*, ID1_*), NS_DEVICES/CTRLS (no duplicates appeared).
set -u
rep_connect "$ADDR" "$PORT" "$NQN" "${OPTS:-}" || rep_fail "connect failed"
ns=${REP_DEV##*/}

identity() {
  # $1 prefix: what a reconnect must keep identical, plus the (new) cntlid
  for a in subsysnqn serial model cntlid; do
    rep_result "${1}_$a" "$(rep_ctrl_attr "$REP_CTRL" "$a" | tr ' ' '_')"
  done
  for a in wwid nguid uuid nsid size; do
    rep_result "${1}_ns_$a" "$(cat "/sys/block/$ns/$a" 2>/dev/null | tr ' ' '_')"
  done
}
identity ID0

rm -f /tmp/stop /tmp/bad /tmp/rounds; echo 0 > /tmp/done
workload() {
  i=0
  for r in $PLAN; do
    [ ! -e /tmp/stop ] || break
    old=$IFS; IFS=:; set -- $r; IFS=$old
    t0=$(rep_uptime)
    want=$(rep_sum "$PATTERN" "$2" "$3")
    [ "$i" != "$PRE_ROUNDS" ] || rep_mark running
    rep_put "$PATTERN" "$2" "$REP_DEV" "$1" "$3" "$4" || echo "round $i: write failed" >> /tmp/bad
    got=$(rep_sum "$REP_DEV" "$1" "$3" "$4") || echo "round $i: read failed" >> /tmp/bad
    [ "$want" = "$got" ] || echo "round $i: read back $got, wrote $want" >> /tmp/bad
    echo "$i $t0 $(rep_uptime) $1 $3 $want" >> /tmp/rounds
    i=$((i + 1)); echo "$i" > /tmp/done
  done
}
workload &
wpid=$!

# the mark comes from the workload; the host kills the target when it sees it
down=$(rep_wait_state_not "$REP_CTRL" live "$OUTAGE_WAIT") || { touch /tmp/stop; wait "$wpid"; rep_fail "controller never left live"; }
t_down=$(rep_uptime)
rep_log "controller $REP_CTRL: $down at $t_down"
rep_result DOWN_STATE "$down"
rep_wait_state "$REP_CTRL" live 90 || { touch /tmp/stop; wait "$wpid"; rep_fail "controller not live again"; }
t_up=$(rep_uptime)
rep_log "controller $REP_CTRL: live again at $t_up"
rep_mark reconnected
rep_result T_DOWN "$t_down"
rep_result T_UP "$t_up"

goal=$(($(cat /tmp/done) + POST_ROUNDS))
until [ "$(cat /tmp/done)" -ge "$goal" ] || ! kill -0 "$wpid" 2>/dev/null; do sleep 0.2; done
touch /tmp/stop
wait "$wpid"
rep_result ROUNDS "$(cat /tmp/done)"
rep_result BAD "$( [ -e /tmp/bad ] && wc -l < /tmp/bad || echo 0)"
[ ! -e /tmp/bad ] || cat /tmp/bad
# rounds whose interval overlaps [t_down, t_up]: I/O that waited out the outage
rep_result SPAN "$(awk -v d="$t_down" -v u="$t_up" '$2 <= u && $3 >= d { n++ } END { print n + 0 }' /tmp/rounds)"
rep_result MAX_ROUND_S "$(awk '{ s = $3 - $2; if (s > m) m = s } END { print m + 0 }' /tmp/rounds)"

# the newest write of each slot must still read back (O_DIRECT, caches dropped)
echo 3 > /proc/sys/vm/drop_caches
final_bad=0
awk -v slot="$SLOT" '{ last[int($4 / slot)] = $4 " " $5 " " $6 } END { for (s in last) print last[s] }' \
  /tmp/rounds > /tmp/last
while read -r off len want; do
  [ "$(rep_sum "$REP_DEV" "$off" "$len")" = "$want" ] || { rep_log "final check: $off+$len differs"; final_bad=$((final_bad + 1)); }
done < /tmp/last
rep_result FINAL_BAD "$final_bad"
rep_result FINAL_RANGES "$(wc -l < /tmp/last)"

identity ID1
# namespace heads only (the hidden path devices are nvmeXcYnZ)
rep_result NS_DEVICES "$(ls /sys/block | grep -cE '^nvme[0-9]+n[0-9]+$')"
rep_result CTRLS "$(ls /sys/class/nvme | grep -cE '^nvme[0-9]+$')"
rep_result REQUEUED "$(dmesg | grep -c 'requeuing I/O')"
rep_result IO_ERRORS "$(dmesg | grep -ciE 'I/O error|blk_update_request|critical medium|end_request')"
dmesg | grep -iE 'nvme|I/O error' | tail -n 30

rep_disconnect
[ "$(cat /tmp/done)" -ge "$goal" ] || rep_fail "workload stopped early after $(cat /tmp/done) rounds"
[ ! -e /tmp/bad ] || rep_fail "$(wc -l < /tmp/bad) round(s) failed"
[ "$final_bad" = 0 ] || rep_fail "$final_bad range(s) wrong at the end"
rep_pass "survived a target restart: $down -> live"
