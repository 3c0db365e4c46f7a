#!/usr/bin/env bash
# The whole test suite: lint, types, then unit + functional + integration tests on a real broker.
source "$(dirname "$0")/bootstrap.sh"
# promtool (Debian's 'prometheus' package) checks and unit-tests deploy/prometheus/alerts.yml.
if ! command -v promtool > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing promtool (apt-get install prometheus)" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
             --no-install-recommends prometheus > /dev/null; }; then
      echo "could not install promtool: its tests will be skipped" >&2
    fi
  else
    echo "promtool missing and not root: its tests will be skipped (apt-get install prometheus)" >&2
  fi
fi
# Headless Chromium and its driver (Debian's chromium + chromium-driver) for the console's
# browser tests; quick when both are there.
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing chromium + chromium-driver (console browser tests)" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
             --no-install-recommends chromium chromium-driver > /dev/null; }; then
      echo "could not install chromium: the console browser tests will be skipped" >&2
    fi
  else
    echo "chromium missing and not root: console browser tests skipped (apt-get install chromium chromium-driver)" >&2
  fi
fi
ruff check pipeline tests bench
ruff format --check pipeline tests bench
mypy
pipeline schemas --check
pipeline asyncapi --check
exec pytest -q -p no:cacheprovider "$@"
