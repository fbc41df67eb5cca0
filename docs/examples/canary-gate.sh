#!/bin/sh
# Gate one canary stage on the tree a host is about to run.
# Exit 0: proceed to the next stage. Anything else: roll this stage back.
#
#   canary-gate.sh RELEASE_DIR [PUBLIC_KEY]
#
# The public key defaults to DURI_INTEGRITY_PUBLIC_KEY or /etc/duri-integrity/trusted-keys.d.
set -u
release_dir=$1
if [ $# -ge 2 ]; then
    set -- --public-key "$2"
else
    set --
fi
duri-integrity verify "$release_dir" "$@" --json | jq -e '.integrity_verified' > /dev/null
