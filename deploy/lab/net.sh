# The lab's network: one network namespace per host, all on one bridge.
# Sourced by deploy/lab/lab.sh; needs root and iproute2.
#
# Every name carries the prefix $lab_prefix (default jgl-): the namespaces
# are jgl-<host>, plus jgl-sw, which holds the bridge (br0) and the host
# end of every veth pair (named after the host). The bridge lives in a
# namespace of its own so that nothing is added to the machine's own
# network, and so that its firewall (e.g. br_netfilter rules) never sees
# the lab's traffic. Each host has eth0 with $lab_net.<octet>/24 and lo up;
# no host has a route out of the /24.
#
# Everything the lab starts runs inside one of these namespaces, so
# `lab_net_down` finds every process through `ip netns pids`, kills it and
# deletes the namespaces (which deletes the veths and the bridge with them):
# also the leftovers of a run that was killed before it could clean up.

lab_prefix=${LAB_PREFIX:-jgl-}
lab_net=${LAB_NET:-10.77.0}
lab_switch="${lab_prefix}sw"

# host → last octet of its address.
declare -A lab_octet=(
  [redis1]=11 [redis2]=12 [redis3]=13 [redis4]=14 [redis5]=15 [redis6]=16
  [gw1]=21 [gw2]=22 [lb]=30
  [dask-sched]=40 [daskw1]=41 [daskw2]=42
  [wk1]=51 [wk2]=52
  [load]=60
)
# In start order (the table above has none).
lab_hosts=(redis1 redis2 redis3 redis4 redis5 redis6 gw1 gw2 lb dask-sched daskw1 daskw2 wk1 wk2 load)

# addr <host>: the host's address.
addr() {
  echo "$lab_net.${lab_octet[$1]}"
}

# ns <host>: the host's namespace.
ns() {
  echo "$lab_prefix$1"
}

# on <host> <command>…: runs the command in the host's namespace.
on() {
  local host=$1
  shift
  ip netns exec "$(ns "$host")" "$@"
}

# The lab's namespaces that exist now (this run's or a previous one's).
lab_namespaces() {
  ip netns list 2>/dev/null | awk -v prefix="$lab_prefix" 'index($1, prefix) == 1 { print $1 }'
}

# pids_in <namespace>: the processes whose network namespace it is.
pids_in() {
  ip netns pids "$1" 2>/dev/null || true
}

# lab_net_down: every process in a lab namespace gets SIGTERM, then SIGKILL
# after up to $1 s (default 2); then the namespaces are deleted.
lab_net_down() {
  local grace_s=${1:-2} namespace pid deadline left
  local -a namespaces pids=()
  mapfile -t namespaces < <(lab_namespaces)
  [ "${#namespaces[@]}" -gt 0 ] || return 0
  for namespace in "${namespaces[@]}"; do
    mapfile -t -O "${#pids[@]}" pids < <(pids_in "$namespace")
  done
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + grace_s))
    while [ "$SECONDS" -lt "$deadline" ]; do
      left=0
      for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then left=1; break; fi
      done
      [ "$left" = 1 ] || break
      sleep 0.1
    done
    # What is still there, and anything started meanwhile.
    for namespace in "${namespaces[@]}"; do
      mapfile -t -O "${#pids[@]}" pids < <(pids_in "$namespace")
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  for namespace in "${namespaces[@]}"; do
    ip netns del "$namespace" 2>/dev/null || true
  done
}

# lab_net_up: the switch namespace with its bridge, and every host's
# namespace wired to it.
lab_net_up() {
  local host
  ip netns add "$lab_switch"
  ip -n "$lab_switch" link set lo up
  ip -n "$lab_switch" link add br0 type bridge
  ip -n "$lab_switch" link set br0 up
  for host in "${lab_hosts[@]}"; do
    ip netns add "$(ns "$host")"
    ip link add eth0 netns "$(ns "$host")" type veth peer name "$host" netns "$lab_switch"
    ip -n "$lab_switch" link set "$host" master br0 up
    ip -n "$(ns "$host")" link set lo up
    ip -n "$(ns "$host")" addr add "$(addr "$host")/24" dev eth0
    ip -n "$(ns "$host")" link set eth0 up
  done
}

# link_down <host> / link_up <host>: cuts or restores the host's only link
# (its veth's end on the switch): its packets are dropped, not refused.
link_down() {
  ip -n "$lab_switch" link set "$1" down
}

link_up() {
  ip -n "$lab_switch" link set "$1" up
}
