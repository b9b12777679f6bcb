#!/usr/bin/env bash
# Self-test of scripts/cluster and scripts/node-exec: brings up a 4-node namespace cluster, checks
# every promise the scripts make (names, addresses, private /tmp, ssh and node-exec semantics, the
# daemon hook), brings it down and checks that nothing is left; then checks that a failed `up` and
# dead nodes are handled. Needs root (exit 77 = skipped otherwise). Ends with "N passed, N failed"
# and exits non-zero on any failure.
# Command lines in single quotes are meant to expand on the node, not here.
# shellcheck disable=SC2016
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=$ROOT/scripts/cluster
NODE_EXEC=$ROOT/scripts/node-exec
VIEW=/run/rlaunch-cluster

# shellcheck source=tests/selftest-lib.sh
. "$ROOT/tests/selftest-lib.sh"
selftest_need selftest ip ssh sshd nsenter unshare setpriv

STATE=$(mktemp -d /tmp/rlaunch-selftest.XXXXXX)
SSH=(ssh -F "$STATE/ssh_config")
finish() {
    "$CLUSTER" down --state "$STATE" >/dev/null 2>&1 || true
    rm -rf "$STATE" "${SNAP:-}"
    if [ -n "${made_auth:-}" ]; then
        rm -f "$AUTH"
        rmdir "$HOME_DIR/.ssh" 2>/dev/null || true
    fi
}
trap finish EXIT

if ip link show rlbr0 >/dev/null 2>&1; then
    echo "selftest: a cluster is already up on this machine (bridge rlbr0); run scripts/cluster down --state DIR first" >&2
    exit 1
fi

HOME_DIR=$(getent passwd root | cut -d: -f6)
AUTH=$HOME_DIR/.ssh/authorized_keys
SNAP=$(mktemp -d)
snapshot() { # the files `up` edits, and whether they existed
    cp /etc/hosts "$SNAP/hosts"
    if [ -e "$AUTH" ]; then cp "$AUTH" "$SNAP/auth"; else rm -f "$SNAP/auth"; fi
    if [ -d "$HOME_DIR/.ssh" ]; then : >"$SNAP/sshdir"; else rm -f "$SNAP/sshdir"; fi
}

live() { # "pid start" -> true if that process still runs (zombies do not count)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    [ "$1" != Z ]
}

# Everything `up` made is gone and the edited files are back to their exact former bytes.
assert_clean() { # label, pids that must be gone...
    local label=$1 p left=""
    shift
    eq "$label: no rl-n* namespace" "" "$(ip netns list | awk '{print $1}' | grep -E '^rl-n' || true)"
    eq "$label: no rlbr0/rlv* link" "" "$(ip -o link show | awk -F': ' '{print $2}' | grep -E '^(rlbr0|rlv[0-9])' || true)"
    check "$label: /etc/hosts restored byte for byte" cmp /etc/hosts "$SNAP/hosts"
    if [ -e "$SNAP/auth" ]; then
        check "$label: authorized_keys restored byte for byte" cmp "$AUTH" "$SNAP/auth"
    else
        eq "$label: authorized_keys removed (it did not exist)" absent "$([ -e "$AUTH" ] && echo present || echo absent)"
    fi
    if [ ! -e "$SNAP/sshdir" ]; then
        eq "$label: ~/.ssh removed (it did not exist)" absent "$([ -e "$HOME_DIR/.ssh" ] && echo present || echo absent)"
    fi
    eq "$label: state dir removed" absent "$([ -e "$STATE" ] && echo present || echo absent)"
    eq "$label: $VIEW removed" absent "$([ -e "$VIEW" ] && echo present || echo absent)"
    for p in "$@"; do live "$p" && left+=" $p"; done
    eq "$label: recorded processes ended" "" "$left"
    eq "$label: no process runs a cluster sshd" "" "$(cluster_sshds)"
}

cluster_sshds() { # PIDs of live processes whose command line names a node's sshd config
    local d
    for d in /proc/[0-9]*; do
        tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -e "$VIEW/n[0-9]*/sshd_config" -e "$STATE/n[0-9]*/sshd_config" &&
            live "${d#/proc/}" && printf '%s ' "${d#/proc/}"
    done
    return 0
}

recorded_pids() { local f; for f in "$STATE"/pids/*; do [ -f "$f" ] && cut -d' ' -f1 "$f"; done; }

# --- refusals that must leave nothing behind ---
snapshot
# Run as nobody from a copy anyone can read: the checkout itself may sit in a home directory
# that others cannot enter (which would make the exit 126, not the 77 under test).
OPEN=$(mktemp -d) && chmod 755 "$OPEN" && install -m 0755 "$CLUSTER" "$OPEN/cluster"
rc=0; setpriv --reuid=65534 --regid=65534 --clear-groups "$OPEN/cluster" up 2 --state "$STATE" >/dev/null 2>&1 || rc=$?
rm -rf "$OPEN"
eq "up as non-root exits 77" 77 "$rc"
for n in 0 201 x; do
    rc=0; "$CLUSTER" up "$n" --state "$STATE" >/dev/null 2>&1 || rc=$?
    eq "up $n is refused" 1 "$rc"
done
eq "refused ups created no bridge" "" "$(ip -o link show rlbr0 2>/dev/null || true)"

# --- a working 4-node cluster ---
t0=$(date +%s%N)
rc=0; out=$("$CLUSTER" up 4 --state "$STATE" 2>"$SNAP/up.err") || rc=$?
t1=$(date +%s%N)
eq "up 4 succeeds" 0 "$rc"
[ "$rc" -eq 0 ] || { cat "$SNAP/up.err"; echo "$pass passed, $((failed)) failed"; exit 1; }
ms=$(((t1 - t0) / 1000000))
echo "     (up 4 took ${ms} ms)"
if [ "$ms" -lt 15000 ]; then ok "up 4 finished in under 15 s"; else bad "up 4 took ${ms} ms"; fi
case $out in *"RLAUNCH_CLUSTER_STATE=$STATE"*) ok "up prints RLAUNCH_CLUSTER_STATE" ;; *) bad "up prints RLAUNCH_CLUSTER_STATE" "$out" ;; esac
eval "$out"
eq "printed node list" "n1 n2 n3 n4" "${RLAUNCH_CLUSTER_NODES:-}"
eq "hosts file lists n1..n4" "$(printf 'n%s\n' 1 2 3 4)" "$(cat "$STATE/hosts")"
eq "env file is sourceable and names the state dir" "$STATE" "$(env -i bash -c ". '$STATE/env' && echo \$RLAUNCH_CLUSTER_STATE")"
eq "/etc/hosts names every node" "$(printf '10.231.0.%s n%s\n' 1 1 2 2 3 3 4 4)" \
    "$(sed -n '/^# rlaunch-cluster begin$/,/^# rlaunch-cluster end$/p' /etc/hosts | sed '1d;$d')"
eq "the nodes accept exactly the cluster key" "$(cat "$STATE/id_ed25519.pub")" "$(cat "$VIEW/authorized_keys")"
ssh-keygen -q -t ed25519 -N '' -f "$STATE/stranger_ed25519"
rc=0; ssh -F /dev/null -o UserKnownHostsFile="$STATE/known_hosts" -o BatchMode=yes -o IdentitiesOnly=yes \
    -o ConnectTimeout=5 -i "$STATE/stranger_ed25519" root@n1 true 2>/dev/null || rc=$?
eq "a key that is not the cluster's is refused" 255 "$rc"
if [ -e "$SNAP/auth" ]; then
    check "root's authorized_keys is left alone while the cluster is up" cmp "$AUTH" "$SNAP/auth"
else
    eq "root's authorized_keys is not created" absent "$([ -e "$AUTH" ] && echo present || echo absent)"
fi
check "status reports every node up" "$CLUSTER" status --state "$STATE"

host_ns=$(readlink /proc/self/ns/net)
for i in 1 2 3 4; do
    out=$("${SSH[@]}" "n$i" 'hostname; echo "tmp=[$(ls -A /tmp /dev/shm | grep -v -e "^/" -e "^$" | tr "\n" " ")]"; ip -4 -o addr show | awk "{print \$2, \$4}"; ip -4 route show default' 2>&1) || true
    eq "ssh n$i: hostname, empty /tmp and /dev/shm, only 10.231.0.$i, no default route" \
        "$(printf 'n%s\ntmp=[]\nlo 127.0.0.1/8\neth0 10.231.0.%s/24' "$i" "$i")" "$out"
    eq "node-exec n$i hostname" "n$i" "$("$NODE_EXEC" "n$i" hostname 2>&1)"
    for ns in net uts mnt; do
        a=$("${SSH[@]}" "n$i" readlink /proc/self/ns/$ns 2>&1)
        b=$("$NODE_EXEC" "n$i" readlink /proc/self/ns/$ns 2>&1)
        c=$("$CLUSTER" exec "n$i" readlink /proc/self/ns/$ns 2>&1)
        if [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$a" != "$(readlink /proc/self/ns/$ns)" ]; then
            ok "n$i: ssh, node-exec and exec share the node's own $ns namespace"
        else
            bad "n$i: ssh, node-exec and exec share the node's own $ns namespace" "ssh=$a node-exec=$b exec=$c host=$(readlink /proc/self/ns/$ns)"
        fi
    done
done
eq "nodes have distinct network namespaces" 4 \
    "$(for i in 1 2 3 4; do "$NODE_EXEC" "n$i" readlink /proc/self/ns/net; done | sort -u | grep -v -c "$host_ns")"

# Private /tmp and /dev/shm: what n1 writes there, n2 and the host do not see.
"$NODE_EXEC" n1 'touch /tmp/selftest-mark /dev/shm/selftest-mark'
eq "n1 sees its own /tmp file" yes "$("${SSH[@]}" n1 'test -e /tmp/selftest-mark && test -e /dev/shm/selftest-mark && echo yes || echo no')"
eq "n2 does not see n1's /tmp or /dev/shm" no "$("$NODE_EXEC" n2 'test -e /tmp/selftest-mark || test -e /dev/shm/selftest-mark && echo yes || echo no')"
eq "the host does not see n1's /tmp or /dev/shm" no "$(test -e /tmp/selftest-mark || test -e /dev/shm/selftest-mark && echo yes || echo no)"
eq "/work is shared with the nodes" "$(stat -c %i "$ROOT")" "$("$NODE_EXEC" n3 stat -c %i "$ROOT")"

# node-exec behaves like ssh: words joined and run by a shell, status, stdin, stderr.
same_as_ssh() {
    eq "node-exec matches ssh for: $*" "$("${SSH[@]}" n3 "$@" 2>&1)" "$("$NODE_EXEC" n3 "$@" 2>&1)"
}
same_as_ssh echo a '   b'
same_as_ssh echo "'x  y'" '$((6*7))'
same_as_ssh 'cd /tmp && pwd'
same_as_ssh echo '$HOME' '$PWD' '$USER'
same_as_ssh 'echo one; echo two >&2; exit 0'
rc=0; "$NODE_EXEC" n2 'exit 7' || rc=$?
eq "node-exec passes the exit status" 7 "$rc"
eq "node-exec passes stdin through" "abc" "$(printf abc | "$NODE_EXEC" n2 cat)"
out=$("$NODE_EXEC" n2 'echo out; echo err >&2' 2>"$SNAP/err")
eq "node-exec keeps stderr apart from stdout" "out|err" "$out|$(cat "$SNAP/err")"
eq "node-exec passes no caller environment by default" "" "$(SELFTEST_SECRET=1 "$NODE_EXEC" n2 'echo ${SELFTEST_SECRET:-}')"
eq "RLAUNCH_NODE_EXEC_KEEP_ENV=1 passes it" 1 "$(SELFTEST_SECRET=1 RLAUNCH_NODE_EXEC_KEEP_ENV=1 "$NODE_EXEC" n2 'echo ${SELFTEST_SECRET:-}')"
rc=0; "$NODE_EXEC" n9 true 2>/dev/null || rc=$?
eq "node-exec to an unknown node fails with 255" 255 "$rc"

# Nodes reach each other by name, with ssh and with node-exec, through the node-visible view.
eq "n1 -> n2 over ssh with $VIEW/ssh_config" n2 "$("$NODE_EXEC" n1 "ssh -F $VIEW/ssh_config n2 hostname" 2>&1)"
eq "n4 -> n2 with node-exec from inside a node" n2 "$("$NODE_EXEC" n4 "$NODE_EXEC n2 hostname" 2>&1)"

rc=0; "$CLUSTER" exec n3 sh -c 'exit 5' || rc=$?
eq "cluster exec passes the exit status" 5 "$rc"
eq "cluster exec runs argv in the node" "n3 10.231.0.3/24" "$("$CLUSTER" --state "$STATE" exec n3 sh -c 'echo $(hostname) $(ip -4 -o addr show eth0 | awk "{print \$4}")')"

# The per-node daemon hook.
dpid=$("$CLUSTER" --state "$STATE" spawn n2 sleeper sleep 600 3>"$SNAP/fd3")
eq "spawned daemon holds only stdin/out/err (no caller pipes)" "0 1 2" "$(fds=("/proc/$dpid/fd"/*); printf '%s\n' "${fds[@]##*/}" | sort -n | tr '\n' ' ' | sed 's/ $//')"
eq "spawned daemon runs in n2's network namespace" "$("$NODE_EXEC" n2 readlink /proc/self/ns/net)" "$(readlink "/proc/$dpid/ns/net" 2>&1)"
rc=0; "$CLUSTER" --state "$STATE" spawn n2 sleeper sleep 600 >/dev/null 2>&1 || rc=$?
eq "a second daemon of the same name is refused" 1 "$rc"

rc=0; msg=$("$CLUSTER" up 2 --state "$STATE" 2>&1) || rc=$?
eq "up on a live cluster is refused" 1 "$rc"
case $msg in *"down --state $STATE"*) ok "the refusal says how to down" ;; *) bad "the refusal says how to down" "$msg" ;; esac
other=$(mktemp -d /tmp/rlaunch-selftest-other.XXXXXX)
rc=0; "$CLUSTER" up 1 --state "$other" >/dev/null 2>&1 || rc=$?
eq "a second cluster with another state dir is refused" 1 "$rc"
check "the refused second cluster left the first one running" "$CLUSTER" status --state "$STATE"
rmdir "$other"

# --- down ---
mapfile -t pids < <(recorded_pids)
eq "pids recorded for 4 nodes and the daemon" 5 "${#pids[@]}"
check "down succeeds" "$CLUSTER" down --state "$STATE"
assert_clean "after down" "${pids[@]}" "$dpid"
check "down twice is harmless" "$CLUSTER" down --state "$STATE"
rc=0; "$NODE_EXEC" n1 true 2>/dev/null || rc=$?
eq "node-exec after down fails with 255" 255 "$rc"

# --- a failed up cleans up after itself ---
rc=0; RLAUNCH_CLUSTER_TEST_FAIL_AFTER=2 "$CLUSTER" up 3 --state "$STATE" >/dev/null 2>&1 || rc=$?
eq "an up that fails midway exits non-zero" 1 "$rc"
assert_clean "after failed up"

# --- dead nodes; this time root already has an authorized_keys file ---
made_auth=""
if [ ! -e "$AUTH" ]; then
    mkdir -m 0700 "$HOME_DIR/.ssh"
    printf '# placeholder from tests/cluster/selftest.sh\n' >"$AUTH"
    made_auth=1
fi
snapshot
"$CLUSTER" up 2 --state "$STATE" >/dev/null
read -r n2pid _ <"$STATE/pids/n2.init"
kill "$n2pid"
for _ in $(seq 30); do live "$n2pid" || break; sleep 0.1; done
rc=0; "$CLUSTER" status --state "$STATE" >/dev/null || rc=$?
eq "status fails when a node died" 1 "$rc"
rc=0; "$NODE_EXEC" n2 true 2>/dev/null || rc=$?
eq "node-exec to a dead node fails with 255" 255 "$rc"
read -r n1pid _ <"$STATE/pids/n1.init"
kill "$n1pid"
for _ in $(seq 30); do live "$n1pid" || break; sleep 0.1; done
rc=0; "$CLUSTER" up 2 --state "$STATE" >/dev/null 2>&1 || rc=$?
eq "up over a dead cluster's state replaces it" 0 "$rc"
eq "the replacement answers" n2 "$("${SSH[@]}" n2 hostname 2>&1)"
mapfile -t pids < <(recorded_pids)
check "down after the replacement" "$CLUSTER" down --state "$STATE"
assert_clean "after final down" "${pids[@]}"
if [ -n "$made_auth" ]; then
    rm -f "$AUTH"
    rmdir "$HOME_DIR/.ssh" 2>/dev/null || true
fi

echo "$pass passed, $failed failed"
[ "$failed" -eq 0 ]
