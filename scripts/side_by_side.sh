#!/usr/bin/env bash
# An independent check of tpbench's peer cost: no observer against tcpstates-bpfcc as Debian ships
# it, measured without tpbench's runner, topology, counters or parser.
#
#   sudo scripts/side_by_side.sh                 # 20,000 connections, 3 rounds
#   sudo N=40000 R=4 scripts/side_by_side.sh
#   sudo SESSION=shared scripts/side_by_side.sh  # tcpstates in the workload's session (see below)
#
# What it does: two namespaces made with ip(8) on a veth pair (198.19.9.1/.2, no route out), the C
# churn generator tpbench builds (python -m harness.cbuild churn, concurrency 4) and the host's busy
# CPU from /proc/stat (user+nice+system+irq+softirq jiffies) over the client's run, per connection.
# tcpstates runs as a user runs it: started, waited for until it prints its header, stopped after
# the run; its rows for the test addresses are counted against the ~10 transitions per connection,
# and its "Possibly lost" lines are counted.
#
# SESSION=own (default) starts tcpstates in a session of its own, as from another terminal: with
# CONFIG_SCHED_AUTOGROUP a session is a scheduling group, and tpbench starts every observer process
# so. SESSION=shared leaves it in the workload's session, where it gets less CPU and loses more.
#
# Compare with: tpbench run -b none,tracepoint,bcc-tcpstates -w churn -p connections=20000 -n 3
# The baselines differ in what they count (this: every busy jiffy on the host; tpbench: cpuacct
# runtime); compare the added cost per connection and the ratio, not the bare timings.
set -u
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "side_by_side.sh: must run as root" >&2; exit 2; }
CHURN=$(.venv/bin/python -m harness.cbuild churn)
[ -x "$CHURN" ] || { echo "side_by_side.sh: $CHURN missing: run make setup" >&2; exit 2; }
command -v tcpstates-bpfcc > /dev/null || { echo "side_by_side.sh: tcpstates-bpfcc missing (apt install bpfcc-tools)" >&2; exit 2; }
N=${N:-20000}; R=${R:-3}; SESSION=${SESSION:-own}
A=tpb-sbs-server; B=tpb-sbs-client; SERVER=198.19.9.1; CLIENT=198.19.9.2  # tpb-*: `tpbench cleanup` finds them
# bcc needs kernel headers; where the running kernel has none, the tree tpbench's setup merged
if [ ! -d "/lib/modules/$(uname -r)/build" ] && [ -z "${BCC_KERNEL_SOURCE:-}" ]; then
    BCC_KERNEL_SOURCE=$(ls -d /root/.cache/tpbench/kernel-headers/6.1.* 2>/dev/null | tail -1)
    export BCC_KERNEL_SOURCE
fi
WORK=$(mktemp -d /dev/shm/tpb-sbs.XXXXXX)
MOUNTED=0
cleanup() {
    [ -n "${TOOL:-}" ] && kill -TERM "$TOOL" 2>/dev/null
    [ -n "${HOLD:-}" ] && kill "$HOLD" 2>/dev/null
    ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
    [ $MOUNTED = 1 ] && umount /sys/kernel/tracing
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# bcc finds the tracepoint (rather than a kprobe, which this host lacks) only through tracefs
mountpoint -q /sys/kernel/tracing || { mount -t tracefs nodev /sys/kernel/tracing && MOUNTED=1; }
ip netns add $A && ip netns add $B || exit 1
ip link add tpbsbss type veth peer name tpbsbsc
ip link set tpbsbss netns $A; ip link set tpbsbsc netns $B
ip -n $A addr add $SERVER/24 dev tpbsbss; ip -n $B addr add $CLIENT/24 dev tpbsbsc
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set tpbsbss up; ip -n $B link set tpbsbsc up

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
HZ=$(getconf CLK_TCK)
measure() {  # prints busy CPU us per connection of one churn run
    local port=$((20000 + RANDOM % 20000)) before after
    mkfifo "$WORK/hold"
    ip netns exec $A "$CHURN" server --address $SERVER --port $port --count "$N" --concurrency 4 \
        < "$WORK/hold" > "$WORK/server.json" &
    local server=$!
    sleep 3600 > "$WORK/hold" & HOLD=$!  # the server's stdin stays open while the client runs
    sleep 0.3
    before=$(busy)
    ip netns exec $B "$CHURN" client --address $SERVER --port $port --count "$N" --concurrency 4 > "$WORK/client.json"
    after=$(busy)
    kill $HOLD; wait $HOLD 2>/dev/null; HOLD=
    wait $server; rm -f "$WORK/hold"
    awk -v b="$before" -v a="$after" -v hz="$HZ" -v n="$N" 'BEGIN { printf "%.1f", (a - b) / hz * 1e6 / n }'
}
printf '%-6s %-10s %14s %10s %12s\n' round observer "CPU us/conn" rows "lost lines"
for round in $(seq "$R"); do
    printf '%-6s %-10s %14s\n' "$round" none "$(measure)"
    out="$WORK/tcpstates.out"
    if [ "$SESSION" = own ]; then
        PYTHONUNBUFFERED=1 setsid tcpstates-bpfcc > "$out" 2>&1 & TOOL=$!
    else
        PYTHONUNBUFFERED=1 tcpstates-bpfcc > "$out" 2>&1 & TOOL=$!
    fi
    for _ in $(seq 300); do grep -q SKADDR "$out" && break; kill -0 $TOOL 2>/dev/null || break; sleep 0.1; done
    grep -q SKADDR "$out" || { echo "tcpstates-bpfcc did not start:" >&2; tail -3 "$out" >&2; exit 1; }
    cost=$(measure)
    sleep 2  # its backlog printed
    kill -TERM $TOOL; wait $TOOL 2>/dev/null; TOOL=
    printf '%-6s %-10s %14s %10s %12s\n' "$round" tcpstates "$cost" "$(grep -c "$SERVER" "$out")/~$((N * 10 + 2))" \
        "$(grep -c 'Possibly lost' "$out")"
done
