#!/bin/sh
# Gate one canary stage on the tree a host is about to run.
# Exit 0: proceed to the next stage. Anything else: roll this stage back.
#
#   canary-gate.sh RELEASE_DIR [PUBLIC_KEY]
#
# The public key defaults to DURI_INTEGRITY_PUBLIC_KEY or /etc/duri-integrity/trusted-keys.d;
# the deployment this host runs comes from DURI_INTEGRITY_DEPLOYMENT or the system config.
#
# It fails closed: plain sh has no pipefail, so the exit code of duri-integrity is checked
# before jq reads anything (a missing tool exits 127, a failed check 1, 3 or 4), and jq must
# then see exactly one report that says verified (jq 1.6 exits 0 on empty input).
set -eu
release_dir=$1
if [ $# -ge 2 ]; then
    set -- --public-key "$2"
else
    set --
fi
report=$(duri-integrity verify "$release_dir" "$@" --json) || exit
printf '%s\n' "$report" | jq -s -e 'length == 1 and .[0].integrity_verified == true' > /dev/null
