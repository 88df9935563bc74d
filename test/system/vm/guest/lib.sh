# Guest helper library for test scripts (busybox ash). /init sources it, and
# so does every script (". /etc/rep/lib.sh"), after /etc/rep/env.
#
# Reporting: lines go to the console AND to ttyS1, the report channel that
# runGuest (test/helpers/vm.ts) parses; kernel messages never reach ttyS1.
#   rep_result KEY VALUE     "REP-RESULT KEY=VALUE" (results map)
#   rep_mark NAME            "REP-MARK NAME" (lets the host react mid-run: onReport)
#   rep_pass [note]          "REP-VERDICT: PASS [note]", exit 0 (first verdict wins)
#   rep_fail reason          "REP-VERDICT: FAIL reason", exit 1
# NVMe/TCP host:
#   rep_connect ADDR PORT NQN [OPTS]   write a connect string to /dev/nvme-fabrics;
#        OPTS is a comma list passed through, e.g. "nr_io_queues=2,hdr_digest,data_digest,
#        keep_alive_tmo=5,ctrl_loss_tmo=30,reconnect_delay=2"; sets REP_CTRL (nvmeN) and,
#        for an I/O controller, REP_DEV (/dev/nvmeXnY, waits up to REP_NS_WAIT s)
#   rep_wait_ns CTRL [SECS]            wait for the namespace block device, set REP_DEV
#   rep_wait_state CTRL STATE SECS     wait until /sys/class/nvme/CTRL/state is STATE
#   rep_wait_state_not CTRL STATE SECS wait until it is anything else; prints the state seen
#   rep_ctrl_attr CTRL ATTR            print a sysfs attribute of the controller
#   rep_discover ADDR PORT             nvme discover (nvme-cli); log also in /tmp/rep-discover.txt
#   rep_disconnect [CTRL]              delete the controller (default REP_CTRL)
# Data:
#   rep_put SRC SRCOFF DEV DEVOFF LEN [BS]   O_DIRECT write of a slice of SRC
#   rep_sum FILE OFF LEN [BS]                sha256 of a range (O_DIRECT on block devices)
# Kernel reference target (nvmet, RAM-backed), for validating scripts:
#   rep_nvmet_start ADDR PORT NQN SIZE_MB

REP_HOSTNQN=${REP_HOSTNQN:-nqn.2014-08.org.nvmexpress:uuid:b10c4e90-0000-4000-8000-000000000001}
REP_HOSTID=${REP_HOSTID:-b10c4e90-0000-4000-8000-000000000001}

rep_log() { echo "rep: $*"; }
# each line is one open/write/close of the tty: the last close waits until the
# UART has sent it, so nothing is lost at power-off
rep_emit() { echo "$*" > /dev/ttyS1; echo "$*"; }
rep_result() { rep_emit "REP-RESULT $1=$2"; }
rep_mark() { rep_emit "REP-MARK $1"; }

rep_verdict() {
  [ ! -s /run/rep.verdict ] || return 0
  if [ "$1" = PASS ]; then shift; echo "PASS${*:+ $*}" > /run/rep.verdict
  else shift; echo "FAIL ${*:-unspecified}" > /run/rep.verdict; fi
  rep_emit "REP-VERDICT: $(cat /run/rep.verdict)"
}
rep_pass() { rep_verdict PASS "$@"; exit 0; }
rep_fail() { rep_verdict FAIL "$@"; exit 1; }

rep_uptime() { cut -d' ' -f1 /proc/uptime; }

rep_net_up() {
  ip link set lo up || return 1
  modprobe virtio_pci && modprobe virtio_net || return 1
  _n=0
  while [ ! -e /sys/class/net/eth0 ]; do
    _n=$((_n + 1)); [ "$_n" -le 100 ] || return 1; sleep 0.1
  done
  # no default route: the guest reaches only 10.0.2.2 (= the host's 127.0.0.1)
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
}

rep_fabrics() {
  # one write(2) of the option string, then the kernel's reply ("instance=N,cntlid=M")
  # read from the same open file; bounded by REP_CONNECT_TIMEOUT seconds
  timeout "${REP_CONNECT_TIMEOUT:-60}" sh -c '
    exec 3<>/dev/nvme-fabrics || exit 1
    printf "%s" "$1" | dd bs=4096 status=none >&3 || exit 1
    head -n 1 <&3' rep-fabrics "$1"
}

rep_connect() {
  modprobe nvme-tcp || return 1
  _o="transport=tcp,traddr=$1,trsvcid=$2,nqn=$3,hostnqn=$REP_HOSTNQN,hostid=$REP_HOSTID${4:+,$4}"
  rep_log "connect: $_o"
  _r=$(rep_fabrics "$_o" 2>&1) || { rep_log "connect failed: ${_r:-no reply}"; return 1; }
  _i=${_r#instance=}; _i=${_i%%,*}
  case "$_i" in ''|*[!0-9]*) rep_log "connect: unexpected reply '$_r'"; return 1 ;; esac
  REP_CTRL=nvme$_i
  rep_log "connect: $_r -> $REP_CTRL state=$(rep_ctrl_attr "$REP_CTRL" state)"
  [ "$3" = nqn.2014-08.org.nvmexpress.discovery ] || rep_wait_ns "$REP_CTRL" "${REP_NS_WAIT:-30}"
}

rep_ctrl_attr() { cat "/sys/class/nvme/$1/$2" 2>/dev/null; }

rep_wait_ns() {
  # Debian's kernel uses native multipath: the path is nvmeXcYnZ, the block device /dev/nvmeXnZ
  REP_DEV=; _n=0; _max=$((${2:-30} * 10))
  while :; do
    for _p in /sys/class/nvme/$1/nvme*n*; do
      [ -e "$_p" ] || continue
      _b=$(echo "${_p##*/}" | sed 's/c[0-9]*n/n/')
      if [ -b "/dev/$_b" ]; then REP_DEV=/dev/$_b; rep_log "namespace: $REP_DEV $(blockdev --getsize64 "$REP_DEV") bytes"; return 0; fi
    done
    _n=$((_n + 1)); [ "$_n" -le "$_max" ] || { rep_log "no namespace appeared on $1"; return 1; }
    sleep 0.1
  done
}

rep_wait_state() {
  _n=0; _max=$(($3 * 10))
  until [ "$(rep_ctrl_attr "$1" state)" = "$2" ]; do
    _n=$((_n + 1)); [ "$_n" -le "$_max" ] || { rep_log "$1 state $(rep_ctrl_attr "$1" state), wanted $2"; return 1; }
    sleep 0.1
  done
}

rep_wait_state_not() {
  _n=0; _max=$(($3 * 10))
  while _s=$(rep_ctrl_attr "$1" state); [ "$_s" = "$2" ]; do
    _n=$((_n + 1)); [ "$_n" -le "$_max" ] || { rep_log "$1 still $2 after $3 s" >&2; return 1; }
    sleep 0.1
  done
  echo "${_s:-gone}"
}

rep_discover() {
  modprobe nvme-tcp || return 1
  timeout "${REP_CONNECT_TIMEOUT:-60}" nvme discover -t tcp -a "$1" -s "$2" \
    --hostnqn="$REP_HOSTNQN" --hostid="$REP_HOSTID" > /tmp/rep-discover.txt 2>&1
  _rc=$?
  cat /tmp/rep-discover.txt
  return $_rc
}

rep_disconnect() {
  _c=${1:-$REP_CTRL}
  [ -n "$_c" ] && [ -e "/sys/class/nvme/$_c/delete_controller" ] || return 0
  echo 1 > "/sys/class/nvme/$_c/delete_controller" && rep_log "disconnect: deleted $_c"
  [ "$_c" != "${REP_CTRL:-}" ] || REP_CTRL=
}

rep_put() {
  # $1 src $2 srcoff $3 dev $4 devoff $5 len [$6 bs]
  dd if="$1" of="$3" bs="${6:-65536}" skip="$2" seek="$4" count="$5" \
    iflag=skip_bytes,count_bytes oflag=seek_bytes,direct conv=notrunc status=none
}

rep_sum() {
  # $1 file $2 off $3 len [$4 bs]
  _fl=skip_bytes,count_bytes; [ ! -b "$1" ] || _fl=$_fl,direct
  dd if="$1" bs="${4:-65536}" skip="$2" count="$3" iflag=$_fl status=none | sha256sum | cut -d' ' -f1
}

rep_nvmet_start() {
  # $1 addr $2 port $3 nqn $4 size MiB: kernel target over a brd RAM disk
  modprobe nvmet-tcp && modprobe brd rd_nr=1 rd_size=$(($4 * 1024)) max_part=0 || return 1
  grep -q configfs /proc/mounts || mount -t configfs none /sys/kernel/config || return 1
  _s=/sys/kernel/config/nvmet/subsystems/$3; _pt=/sys/kernel/config/nvmet/ports/1
  mkdir "$_s" "$_s/namespaces/1" "$_pt" || return 1
  echo 1 > "$_s/attr_allow_any_host"
  echo /dev/ram0 > "$_s/namespaces/1/device_path"
  echo 1 > "$_s/namespaces/1/enable" || return 1
  echo tcp > "$_pt/addr_trtype"; echo ipv4 > "$_pt/addr_adrfam"
  echo "$1" > "$_pt/addr_traddr"; echo "$2" > "$_pt/addr_trsvcid"
  ln -s "$_s" "$_pt/subsystems/$3" && rep_log "nvmet: $3 on $1:$2 ($4 MiB brd)"
}
