#!/usr/bin/env bash
# Makes sure every service the tests talk to is up on loopback:
# PostgreSQL 15 (127.0.0.1:5432), Mosquitto (127.0.0.1:1883), NATS with JetStream (127.0.0.1:4222) and
# TimescaleDB (deploy/timescaledb.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  echo "services: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

if ! port_open 5432; then
  echo "services: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  wait_port 5432 PostgreSQL
fi
if ! port_open 1883; then
  echo "services: starting Mosquitto" >&2
  command -v mosquitto >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients; }
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 1883 Mosquitto
fi
command -v mosquitto_pub >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto-clients; }
# NATS with JetStream: the bus of the scale-out stages (tests/test_cluster.py)
if ! port_open 4222; then
  echo "services: starting NATS with JetStream" >&2
  command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 NATS
fi
# the operator console is tested in a real browser (tests/test_console_browser.py)
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
# socat: the virtual RS-485 line (a pty pair) of the Modbus RTU tests
command -v socat >/dev/null || { apt-get update -qq && apt-get install -y -qq socat; }
# PDF compliance reports: WeasyPrint's Pango, a CJK font, and pdftotext to read the PDF back in the tests
if ! command -v pdftotext >/dev/null || ! fc-list 2>/dev/null | grep -qiE "wqy|noto sans cjk" \
   || ! ldconfig -p | grep -q libpangoft2-1.0; then
  apt-get update -qq && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
    fonts-wqy-microhei poppler-utils
fi
bash "$here/timescaledb.sh" start >/dev/null
