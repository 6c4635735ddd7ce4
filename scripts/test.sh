#!/usr/bin/env bash
# Installs what the tests need, then runs the test suite.
source "$(dirname "$0")/setup.sh"
python -m pytest -q "$@"
