#!/usr/bin/env bash
# Self-test of scripts/slurm-cluster: brings Slurm up on the namespace cluster, runs jobs the ways a
# launcher test will (sbatch over 3 nodes, srun and salloc from the host, srun --input=all inside an
# allocation), checks that scancel of a sleeping job leaves no process behind, and that `down` ends
# every daemon and step it started, with or without a live slurmctld, and removes its files.
#
# Uses the running namespace cluster ($RLAUNCH_CLUSTER_STATE, else /tmp/rlaunch-cluster) when there
# is one, and leaves it running; otherwise brings up a 4-node one of its own and ends it afterwards.
# Needs root (exit 77 = skipped otherwise) and is skipped too when a Slurm cluster already runs
# there (someone is using it; only one fits). Ends with "N passed, N failed"; non-zero on a failure.
# Command lines in single quotes are meant to expand inside the job, not here.
# shellcheck disable=SC2016
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=$ROOT/scripts/cluster
SLURM=$ROOT/scripts/slurm-cluster
VIEW=/run/rlaunch-cluster

# shellcheck source=tests/selftest-lib.sh
. "$ROOT/tests/selftest-lib.sh"
selftest_need "slurm selftest" slurmctld slurmd munged sbatch srun salloc scancel squeue sinfo ip ss

summary() {
    printf '%s passed, %s failed\n' "$pass" "$failed"
    [ "$failed" -eq 0 ]
}

CS=${RLAUNCH_CLUSTER_STATE:-/tmp/rlaunch-cluster}
OWN_CLUSTER=""
if [ -f "$CS/.rlaunch-cluster" ] && "$CLUSTER" --state "$CS" status >/dev/null 2>&1; then
    [ "$(cat "$CS/nodes")" -ge 3 ] || { echo "slurm selftest: the namespace cluster in $CS has fewer than 3 nodes; skipped" >&2; exit 77; }
elif ip link show rlbr0 >/dev/null 2>&1; then
    echo "slurm selftest: a namespace cluster is up but not healthy in $CS (set RLAUNCH_CLUSTER_STATE to its state dir); skipped" >&2
    exit 77
else
    CS=$(mktemp -d /tmp/rlaunch-slurm-selftest-cluster.XXXXXX)
    OWN_CLUSTER=1
    rmdir "$CS"
    "$CLUSTER" up 4 --state "$CS" >/dev/null || { echo "slurm selftest: could not bring up a namespace cluster" >&2; exit 1; }
fi
export RLAUNCH_CLUSTER_STATE=$CS

for f in "$CS"/pids/n*.slurmd; do
    if [ -f "$f" ] && kill -0 "$(cut -d' ' -f1 "$f")" 2>/dev/null; then
        echo "slurm selftest: a Slurm cluster already runs on the namespace cluster in $CS (someone may be using it); skipped" >&2
        exit 77
    fi
done
if ss -Hltn 'sport = :6817' | grep -q .; then
    echo "slurm selftest: port 6817 (slurmctld) is in use on this machine; skipped" >&2
    exit 77
fi

# Under the namespace cluster's view, so the nodes see it; unique, so a leftover never collides.
STATE=$VIEW/slurm-selftest.$$
OUT=$VIEW/slurm-selftest-out.$$
mkdir -p "$OUT"
finish() {
    "$SLURM" down --state "$STATE" >/dev/null 2>&1 || true
    [ -z "$OWN_CLUSTER" ] || "$CLUSTER" down --state "$CS" >/dev/null 2>&1 || true
    rm -rf "$OUT"
}
trap finish EXIT

proc_start() { # pid -> start time, empty if gone or a zombie
    awk '$3 != "Z" { print $22 }' "/proc/$1/stat" 2>/dev/null || true
}
# Live (non-zombie) processes whose command line contains $1.
live_matching() {
    ps -e -o stat=,args= | awk -v m="$1" '$1 !~ /^Z/ && index($0, m) && !/awk/' || true
}
live_stepds() {
    ps -e -o stat=,comm= | awk '$1 !~ /^Z/ && $2 == "slurmstepd"' || true
}
# Bounded poll (0.1 s steps) until the command succeeds.
wait_for() { # polls, command...
    local n=$1 i
    shift
    for ((i = 0; i < n; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
job_gone() { [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; }
job_running() { [ "$(squeue -h -j "$1" -o %T 2>/dev/null)" = RUNNING ]; }
none_matching() { [ -z "$(live_matching "$1")" ]; }
count_matching() { live_matching "$1" | grep -c . || true; }
at_least() { [ "$(count_matching "$2")" -ge "$1" ]; } # count, pattern
no_stepds() { [ -z "$(live_stepds)" ]; }
all_idle() { [ "$(sinfo -h -o '%D %t' 2>/dev/null)" = "$NODES idle" ]; }

# --- up ---------------------------------------------------------------------------------------------
refuse "up refuses a state dir under /tmp (private on every node)" "$SLURM" up --state /tmp/rlaunch-slurm-selftest-$$
eq "that refused up started no slurmctld" "" "$(ss -Hltn 'sport = :6817')"

if ! up_out=$(timeout 120 "$SLURM" up --state "$STATE" 2>&1); then
    bad "up" "$(printf '%s' "$up_out" | tail -n 5 | tr '\n' ' ')"
    summary
    exit 1
fi
ok "up"
eq "up prints the SLURM_CONF export" "export SLURM_CONF=$STATE/slurm.conf" "$(grep '^export SLURM_CONF=' <<<"$up_out")"
check "slurm.env sets SLURM_CONF" grep -qxF "export SLURM_CONF=$STATE/slurm.conf" "$STATE/slurm.env"
export SLURM_CONF=$STATE/slurm.conf
check "status: every daemon up, every node idle" "$SLURM" status --state "$STATE"
NODES=$(cat "$CS/nodes")
eq "sinfo: all $NODES nodes idle in one partition" "$NODES idle" "$(sinfo -h -o '%D %t')"
refuse "a second up on the same state dir is refused" "$SLURM" up --state "$STATE"
check "munged is private: its socket is in the state dir" test -S "$STATE/munge/munge.socket"
check "slurmd on n2 runs in n2's network namespace" \
    test "$(readlink "/proc/$(cut -d' ' -f1 "$STATE/pids/n2.slurmd")/ns/net")" = \
    "$(readlink "/proc/$(cut -d' ' -f1 "$CS/pids/n2.init")/ns/net")"
check "slurmctld answers from a node (n3 reaches 10.231.0.254:6817)" \
    "$CLUSTER" --state "$CS" exec n3 env SLURM_CONF="$SLURM_CONF" timeout 10 scontrol ping

# --- jobs -------------------------------------------------------------------------------------------
cd "$OUT"
jid=$(timeout 30 sbatch --parsable -N 3 -o "$OUT/hostname.out" --wrap \
    'srun hostname | sort | tr "\n" " "; echo; echo "nodes=$SLURM_JOB_NUM_NODES list=$SLURM_JOB_NODELIST"') || jid=""
if [ -n "$jid" ] && wait_for 600 job_gone "$jid"; then
    eq "sbatch -N 3: srun hostname ran on n1 n2 n3" "n1 n2 n3 " "$(sed -n 1p "$OUT/hostname.out")"
    eq "sbatch -N 3: the batch script sees the allocation" "nodes=3 list=n[1-3]" "$(sed -n 2p "$OUT/hostname.out")"
else
    bad "sbatch -N 3 of hostname finished within 60 s" "job '$jid'; $(squeue 2>&1 | tr '\n' ' ')"
fi

got=$(timeout 60 srun -N 2 hostname 2>/dev/null | sort -u | grep -cE '^n[0-9]+$' || true)
eq "srun -N 2 hostname from the host: two distinct nodes" 2 "$got"
# Which two nodes depends on which ones are still completing the previous job.
got=$(timeout 60 salloc -N 2 srun hostname 2>/dev/null | sort -u | grep -cE '^n[0-9]+$' || true)
eq "salloc -N 2 srun hostname: two distinct nodes" 2 "$got"

# The launcher's plan: one daemon per node, each reading its bootstrap line from srun's stdin.
got=$(timeout 60 salloc -N 3 -n 6 sh -c 'echo boot-line | srun --overlap -N 3 -n 3 --ntasks-per-node=1 --input=all \
    sh -c "read l; echo \$SLURM_NODEID \$SLURM_PROCID \$SLURMD_NODENAME \$l"' 2>/dev/null | sort | tr '\n' ';')
eq "srun --input=all: every task (one per node) reads the line" \
    "0 0 n1 boot-line;1 1 n2 boot-line;2 2 n3 boot-line;" "$got"

# --- scancel ----------------------------------------------------------------------------------------
m1="sleep 7$$1"
m2="sleep 7$$2"
jid=$(timeout 30 sbatch --parsable -N 3 -o /dev/null --wrap "srun -N 3 $m1 & $m2; wait") || jid=""
if [ -n "$jid" ] && wait_for 300 job_running "$jid" && wait_for 300 at_least 3 "/usr/bin/$m1"; then
    ok "a sleeping 3-node job runs (batch shell, step srun, one sleep per node)"
    timeout 30 scancel "$jid" || true
    if wait_for 200 none_matching "$m1" && wait_for 100 none_matching "$m2"; then
        ok "scancel: no sleep of the job is left"
    else
        bad "scancel: no sleep of the job is left" "$(live_matching "sleep 7$$" | tr '\n' ';')"
    fi
    check "scancel: no slurmstepd is left" wait_for 200 no_stepds
    check "scancel: the job left the queue" wait_for 300 job_gone "$jid"
    if wait_for 300 all_idle; then ok "scancel: the nodes are idle again"; else
        bad "scancel: the nodes are idle again" "sinfo: $(sinfo -h -o '%D %t' 2>&1 | tr '\n' ';')"
    fi
else
    bad "a sleeping 3-node job runs" "job '$jid'; $(squeue 2>&1 | tr '\n' ' ') $(live_matching "sleep 7$$" | tr '\n' ';')"
fi

# --- down -------------------------------------------------------------------------------------------
# Down with a job still running: it must take the job's processes with it.
m3="sleep 8$$1"
jid=$(timeout 30 sbatch --parsable -N 3 -o /dev/null --wrap "srun -N 3 $m3 & sleep 8$$2; wait") || jid=""
wait_for 300 at_least 3 "/usr/bin/$m3" || bad "a job to outlive runs before down" "$(squeue | tr '\n' ' ')"
records=$(cat "$STATE"/pids/*)
check "down" timeout 60 "$SLURM" down --state "$STATE"
left=""
while read -r p start; do
    # Same pid and start time: not a recycled pid (pid_max is small and others fork a lot).
    if [ "$(proc_start "$p")" = "$start" ]; then left+=" $p($(cat "/proc/$p/comm" 2>/dev/null))"; fi
done <<<"$records"
eq "down: munged, slurmctld and every slurmd are gone" "" "$left"
eq "down: the running job's processes are gone" "" "$(live_matching "sleep 8$$" | tr '\n' ';')"
eq "down: no slurmstepd is left" "" "$(live_stepds)"
check "down: the state dir is gone" test ! -e "$STATE"
eq "down: its pid records in the namespace cluster are gone" "" \
    "$(find "$CS/pids" -name '*.slurmd' -o -name host.munged -o -name host.slurmctld)"
eq "down: port 6817 is free" "" "$(ss -Hltn 'sport = :6817')"
check "down again is harmless" "$SLURM" down --state "$STATE"
[ -n "$OWN_CLUSTER" ] || check "the shared namespace cluster is still up" "$CLUSTER" --state "$CS" status

# Down after slurmctld died: no scancel possible, the steps must still go.
if timeout 120 "$SLURM" up --state "$STATE" >/dev/null 2>&1; then
    m4="sleep 9$$1"
    jid=$(timeout 30 sbatch --parsable -N 3 -o /dev/null --wrap "srun -N 3 $m4 & sleep 9$$2; wait") || jid=""
    if wait_for 300 at_least 3 "/usr/bin/$m4"; then
        kill -KILL "$(cut -d' ' -f1 "$STATE/pids/slurmctld")"
        check "down with slurmctld dead" timeout 60 "$SLURM" down --state "$STATE"
        eq "down with slurmctld dead: the job's processes are gone" "" "$(live_matching "sleep 9$$" | tr '\n' ';')"
        eq "down with slurmctld dead: no slurmstepd is left" "" "$(live_stepds)"
    else
        bad "a job runs before slurmctld is killed" "$(squeue 2>&1 | tr '\n' ' ')"
    fi
else
    bad "up again after down"
fi

summary
