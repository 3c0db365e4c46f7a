#!/usr/bin/env bash
# The whole test suite: lint, types, then unit + functional + integration tests on a real broker.
source "$(dirname "$0")/bootstrap.sh"
ruff check pipeline tests bench
mypy
pipeline schemas --check
exec pytest -q -p no:cacheprovider "$@"
