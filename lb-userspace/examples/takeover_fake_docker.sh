#!/bin/bash
# Check of the takeover cache and ordering without Docker (root; run by tests/tests/takeover.rs): a fake Docker layout
# (overlay namespace with bridge + VXLAN, an lb_ sandbox holding the endpoint, a task, 50 container
# sandboxes) in a private mount namespace it enters itself, so the node's dockerd never sees it:
#   lb-userspace/examples/takeover_fake_docker.sh <takeover_check binary>
set -u
if [ -z "${SLBT_PRIVATE_MNT:-}" ]; then
  exec env SLBT_PRIVATE_MNT=1 unshare --mount --propagation private "$0" "$@"
fi
BIN=$1
D=/var/run/docker/netns
mkdir -p $D
mount -t tmpfs slbt $D
mount -t tmpfs slbt /var/run/netns 2>/dev/null || { mkdir -p /var/run/netns; mount -t tmpfs slbt /var/run/netns; }
VNI=9999999
for n in host ov lb task; do ip netns add slbt-$n; done
touch $D/1-slbtest $D/lb_slbtest
mount --bind /var/run/netns/slbt-ov $D/1-slbtest
mount --bind /var/run/netns/slbt-lb $D/lb_slbtest
ip -n slbt-ov link add br0 type bridge
ip -n slbt-ov link add vxlan0 type vxlan id $VNI dstport 4789
ip -n slbt-ov link set vxlan0 master br0
ip -n slbt-ov link set vxlan0 up; ip -n slbt-ov link set br0 up
# Docker's endpoint 198.19.200.2 in lb_slbtest, a task 198.19.200.10.
ip -n slbt-ov link add ep-br type veth peer name eth0 netns slbt-lb
ip -n slbt-ov link add task-br type veth peer name eth0 netns slbt-task
for p in ep-br task-br; do ip -n slbt-ov link set $p master br0 up; done
ip -n slbt-lb link set eth0 address 02:42:c6:13:c8:02 up; ip -n slbt-lb addr add 198.19.200.2/24 dev eth0
ip -n slbt-task link set eth0 address 02:42:c6:13:c8:0a up; ip -n slbt-task addr add 198.19.200.10/24 dev eth0
ip -n slbt-host link set lo up
# 50 container sandboxes, so that a walk of Docker's namespaces costs what it does on a busy node.
for i in $(seq 1 50); do ip netns add slbt-c$i; touch $D/c$i; mount --bind /var/run/netns/slbt-c$i $D/c$i; done

state() { echo "  docker endpoint: $(ip -n slbt-lb -o link show eth0 | grep -o 'state [A-Z]*\|alias [a-z-]*' | tr '\n' ' ') | host: $(ip -n slbt-host -br link | grep slb- | tr -s ' ' | tr '\n' ';')"; }

echo "== MTU 60 (the peer's MTU cannot be set): fails before parking"
ip netns exec slbt-host $BIN ensure $VNI 198.19.200.0/24 60 198.19.200.2 198.19.200.10 </dev/null
state
echo "== MTU 1450: first full, then (no change) cached, then veth deleted -> full again, then cached"
{ sleep 1; state >&2; echo; sleep 1; ip -n slbt-host link del slb-$VNI; echo; sleep 1; state >&2; echo; sleep 1; } | \
  ip netns exec slbt-host $BIN ensure $VNI 198.19.200.0/24 1450 198.19.200.2 198.19.200.10
state
echo "== neighbours on slb-$VNI:"; ip -n slbt-host neigh show nud permanent
echo "== ping the task from the host side:"; ip netns exec slbt-host ping -c1 -W1 198.19.200.10 | grep -E "bytes from|loss"
echo "== an overlay this node does not have (VNI 9999998): the walk, then no walk while the namespaces stay the same"
{ sleep 0.5; echo; sleep 0.5; ip netns add slbt-new; touch $D/c-new; mount --bind /var/run/netns/slbt-new $D/c-new; echo; } | \
  ip netns exec slbt-host $BIN ensure 9999998 198.19.201.0/24 1450 198.19.201.2 | cut -c1-60
echo "== release:"; ip netns exec slbt-host $BIN release; state
for n in host ov lb task new $(seq -f c%g 1 50); do ip netns del slbt-$n; done
