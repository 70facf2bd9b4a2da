#!/usr/bin/env bash
# A real single-node Slurm cluster with accounting, on loopback, for the Slurm tests:  start | stop | status.
#
#   start   installs the Debian packages if missing (needs root and apt), writes the configs, starts munged, MariaDB,
#           slurmdbd, slurmctld and `slurmd -N localhost`, waits until the node is idle, prints the start time.
#           A no-op when the cluster is already up.
#   stop    cancels the jobs on this cluster, then ends exactly the daemons `start` started (by their pid files).
#   status  prints each daemon (running or not) and the node state; exit status 0 only when the node is usable.
#
# Everything it owns lives in $KNOW_SLURM_STATE (default /var/lib/know-slurm): pid files, logs, the MariaDB data
# (its own mariadbd on 127.0.0.1:$KNOW_SLURM_DB_PORT, default 3307, so a system MariaDB is left alone) and the
# controller state (kept across restarts, so job ids keep increasing and never point at an older job).
# /etc/slurm/slurm.conf and slurmdbd.conf are written only if absent or written by this script (marker line), so a
# real cluster's configuration is never touched. Recipe and pitfalls: docs/slurm.md.
set -euo pipefail

STATE=${KNOW_SLURM_STATE:-/var/lib/know-slurm}
DB_PORT=${KNOW_SLURM_DB_PORT:-3307}
CONF_DIR=/etc/slurm
MARK="# written by know scripts/slurm-local.sh: safe to delete"
DB_PASS=know-slurm-local  # loopback-only database of a throwaway test cluster
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# daemon name -> the process name (/proc/PID/comm) its pid file must point at, so a reused pid is never killed
declare -A COMM=([munged]=munged [mysqld]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld [slurmd]=slurmd)
ORDER=(munged mysqld slurmdbd slurmctld slurmd)

log() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] error: $*" >&2; exit 1; }

pid_of() {  # prints the pid of daemon $1 if its pid file points at a live process of the right name
  local f=$STATE/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 < "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${COMM[$1]}" ] \
    && echo "$pid"
}

node_state() { timeout 15 sinfo -h -n localhost -o %t 2>/dev/null | head -1; }  # 15 s: sinfo is slow on a loaded machine

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- install

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}: run this script as root (it installs them)"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get: install Slurm by hand"
  log "installing ${missing[*]} (apt-get; about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' init scripts from starting system daemons: this script starts its own.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added=1; fi
  { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; } \
    || { [ -n "$added" ] && rm -f $policy; die "apt-get install ${missing[*]} failed"; }
  [ -n "$added" ] && rm -f $policy
  return 0
}

# ---------------------------------------------------------------- configs

write_conf() {  # write_conf PATH MODE: stdin -> PATH, unless PATH exists and is not ours
  local path=$1 mode=$2 tmp
  if [ -e "$path" ] && ! grep -qF "$MARK" "$path"; then
    die "$path exists and was not written by this script (a real cluster's?); move it away to use the local cluster"
  fi
  tmp=$(mktemp "$path.XXXXXX")
  cat > "$tmp"
  chmod "$mode" "$tmp"
  mv "$tmp" "$path"
}

write_configs() {
  mkdir -p "$CONF_DIR" "$STATE/log" "$STATE/slurmctld" "$STATE/slurmd"
  local cpus mem
  cpus=$(nproc)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( ${mem:-4096} * 9 / 10 ))
  write_conf "$CONF_DIR/slurm.conf" 644 <<EOF
$MARK
ClusterName=know
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MpiDefault=none
MinJobAge=3600
KillWait=5
# Tests run minutes: schedule often, and let a requeued job start again 11 s after its requeue (cred_expire + 1)
# instead of 121 s.
SchedulerParameters=sched_interval=2,bf_interval=2
AuthInfo=cred_expire=10
MessageTimeout=20
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  write_conf "$CONF_DIR/slurmdbd.conf" 600 <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

# ---------------------------------------------------------------- daemons

start_munge() {
  pid_of munged >/dev/null && return 0
  if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    log "munge: a munged not started by this script is serving; using it"
    return 0
  fi
  [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || \
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge "$STATE/munge" && chown munge:munge /run/munge "$STATE/munge"
  runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid"
  wait_for 10 munged test -s "$STATE/munge/munged.pid" || die "munged did not start (see /var/log/munge)"
  cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
}

mysql_cmd() { mariadb --no-defaults --socket="$STATE/mysql-run/mysqld.sock" -u root "$@"; }

start_mysql() {
  pid_of mysqld >/dev/null && return 0
  mkdir -p "$STATE/mysql-run" && chown mysql:mysql "$STATE/mysql-run"
  if [ ! -d "$STATE/mysql/mysql" ]; then
    log "initialising the accounting database in $STATE/mysql"
    rm -rf "$STATE/mysql" && mkdir -p "$STATE/mysql" && chown mysql:mysql "$STATE/mysql"
    mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=mysql --skip-test-db \
      --auth-root-authentication-method=socket > "$STATE/log/mysql-install.log" 2>&1 \
      || die "mariadb-install-db failed: see $STATE/log/mysql-install.log"
  fi
  setsid -f /usr/sbin/mariadbd --no-defaults --datadir="$STATE/mysql" --user=mysql --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$STATE/mysql-run/mysqld.sock" --pid-file="$STATE/mysql-run/mysqld.pid" \
    --log-error="$STATE/mysql-run/mysqld.log" --skip-name-resolve --innodb-buffer-pool-size=64M < /dev/null >> "$STATE/log/mysqld-stderr.log" 2>&1
  wait_for 30 mariadb mysql_cmd -e "select 1" || die "MariaDB did not start: see $STATE/mysql-run/mysqld.log"
  cp "$STATE/mysql-run/mysqld.pid" "$STATE/mysqld.pid"
  mysql_cmd <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
  pid_of slurmdbd >/dev/null && return 0
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n -i list cluster || die "slurmdbd did not start: see $STATE/log/slurmdbd.log"
}

start_slurmctld() {
  pid_of slurmctld >/dev/null && return 0
  slurmctld
  wait_for 30 slurmctld scontrol ping || die "slurmctld did not start: see $STATE/log/slurmctld.log"
}

start_slurmd() {
  pid_of slurmd >/dev/null && return 0
  slurmd -N localhost
}

all_running() {  # munged may be a system one; the rest must be ours
  local d
  for d in mysqld slurmdbd slurmctld slurmd; do pid_of "$d" >/dev/null || return 1; done
}

# A node that takes jobs: idle, partly or fully allocated, or completing one (a trailing * means not responding).
state_up() { case "$1" in *"*") return 1;; idle*|mix*|alloc*|comp*) return 0;; *) return 1;; esac; }
node_idle() { state_up "$(node_state)"; }

start() {
  local t0_ns
  t0_ns=$(date +%s%N)
  if node_idle && all_running; then
    log "already running (node $(node_state)); nothing to do"
    return 0
  fi
  install_packages
  write_configs
  start_munge
  start_mysql
  start_slurmdbd
  start_slurmctld
  start_slurmd
  if ! wait_for 30 node node_idle; then
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 15 node node_idle || die "node is '$(node_state)', not idle: see $STATE/log/slurmd.log"
  fi
  log "cluster up in $(( ($(date +%s%N) - t0_ns) / 1000000 )) ms: node localhost $(node_state), $(nproc) CPUs" \
      "(state and logs in $STATE)"
}

stop() {
  if pid_of slurmctld >/dev/null; then  # our cluster: its jobs go with it
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      wait_for 20 jobs test -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" || true
    fi
  fi
  local i d pid
  for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
    d=${ORDER[$i]}
    if pid=$(pid_of "$d"); then
      log "stopping $d (pid $pid)"
      kill "$pid"
      wait_for 20 "$d" test ! -d "/proc/$pid" || { log "$d (pid $pid) ignored SIGTERM; SIGKILL"; kill -9 "$pid"; }
    fi
    rm -f "$STATE/$d.pid"
  done
}

status() {
  local d pid ok=0
  for d in "${ORDER[@]}"; do
    if pid=$(pid_of "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; fi
  done
  local state
  state=$(node_state || true)  # read once: the state may change between two reads
  echo "node localhost: $state"
  state_up "$state" || ok=1
  return $ok
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
