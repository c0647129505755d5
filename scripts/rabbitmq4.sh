#!/usr/bin/env bash
# A RabbitMQ 4.x node beside the machine's own, for the tests: Debian 13's package
# (4.0.5, Erlang 27) in a chroot, with RabbitMQ 4.3's denials turned on by configuration.
#
#   scripts/rabbitmq4.sh start    build the chroot once (cached), start the node, print its URL
#   scripts/rabbitmq4.sh stop     stop the node (the chroot stays for the next run)
#   scripts/rabbitmq4.sh ctl ...  rabbitmqctl against the node
#   scripts/rabbitmq4.sh url      print the node's AMQP URL
#
# Needs root (debootstrap, chroot, mounts). Everything comes from Debian's registry.
# The chroot lives in $RMQ4_DIR (default /var/lib/rabbitworker-ci/rmq4-trixie): kept
# between runs on one machine, built on a fresh one (about a minute).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

DIR=${RMQ4_DIR:-/var/lib/rabbitworker-ci/rmq4-trixie}
PORT=${RMQ4_PORT:-5673}
DIST_PORT=${RMQ4_DIST_PORT:-25673}
MGMT_PORT=${RMQ4_MANAGEMENT_PORT:-15673}
NODE=rmq4@localhost
STAMP="$DIR/.rabbitworker-ready"

mirror() {  # the Debian mirror the machine's apt sources already name
  local found
  found=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]*debian[^ ]*' | grep -v security | head -1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

mounted() { mountpoint -q "$1"; }

mount_all() {
  mounted "$DIR/proc" || mount -t proc proc "$DIR/proc"
  mounted "$DIR/dev" || mount --bind /dev "$DIR/dev"
}

unmount_all() {  # never delete $DIR while /dev is bound into it
  for point in "$DIR/dev" "$DIR/proc"; do
    if mounted "$point"; then umount "$point" || umount -l "$point"; fi
  done
}

in_root() { chroot "$DIR" "$@"; }

build() {
  [ -f "$STAMP" ] && return 0
  [ "$(id -u)" = 0 ] || { echo "building the RabbitMQ 4.x chroot needs root" >&2; exit 1; }
  echo "building RabbitMQ 4.x in $DIR (Debian 13 in a chroot)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap \
      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
  fi
  if [ -d "$DIR" ]; then unmount_all; rm -rf --one-file-system "$DIR"; fi
  mkdir -p "$DIR"
  debootstrap --variant=minbase trixie "$DIR" "$(mirror)" >/dev/null
  mount_all
  cp /etc/resolv.conf "$DIR/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
  chmod +x "$DIR/usr/sbin/policy-rc.d"
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    rabbitmq-server >/dev/null
  configure
  touch "$STAMP"
}

configure() {
  cat >"$DIR/etc/rabbitmq/rabbitmq-env.conf" <<EOF
NODENAME=$NODE
NODE_PORT=$PORT
DIST_PORT=$DIST_PORT
EOF
  cat >"$DIR/etc/rabbitmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PORT
management.tcp.port = $MGMT_PORT
management.tcp.ip = 127.0.0.1
loopback_users = none
# RabbitMQ 4.3's defaults, on 4.0.5: what 4.3 refuses is refused here too
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
deprecated_features.permit.queue_master_locator = false
EOF
  echo '[rabbitmq_management,rabbitmq_consistent_hash_exchange].' \
    >"$DIR/etc/rabbitmq/enabled_plugins"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ctl() { in_root /usr/sbin/rabbitmqctl -n "$NODE" "$@"; }

start() {
  build
  mount_all
  configure
  if ! port_open "$PORT"; then
    echo "starting RabbitMQ 4.x ($NODE on 127.0.0.1:$PORT)" >&2
    in_root /usr/sbin/rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do port_open "$PORT" && break; sleep 1; done
    port_open "$PORT" || { echo "RabbitMQ 4.x did not open 127.0.0.1:$PORT" >&2; exit 1; }
    ctl -q await_startup >/dev/null
  fi
  ctl -q enable_feature_flag all >/dev/null 2>&1 || true
  url
}

stop() {
  if [ -f "$STAMP" ] && port_open "$PORT"; then ctl -q stop >/dev/null 2>&1 || true; fi
  unmount_all
}

url() { echo "amqp://guest:guest@127.0.0.1:$PORT/"; }

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  url) url ;;
  ctl) shift; mount_all; ctl "$@" ;;
  version) mount_all; ctl -q version ;;
  *) echo "usage: $0 start|stop|url|ctl ARGS...|version" >&2; exit 2 ;;
esac
