#!/usr/bin/env bash
# Installs the package, then runs the main job: PG-Rank fine-tuning of all-MiniLM-L6-v2 on SciFact.
source "$(dirname "$0")/setup.sh"
python examples/scifact.py "$@"
