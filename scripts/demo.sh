#!/usr/bin/env bash
# Run the router end to end on the embedded broker: sets up .venv on first use.
source "$(dirname "$0")/bootstrap.sh"
exec pipeline demo "$@"
