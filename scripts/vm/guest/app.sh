#!/bin/sh
# The runtime's app inside the guest: the test files, with node's TAP output on the second serial port, then the
# exit code, then an immediate reboot (QEMU runs with -no-reboot, so it exits).
. /vm/env
cd "$REPO/dist/test/vm"
# shellcheck disable=SC2086 # TEST_FILES is a list of plain file names
node --test --test-reporter=tap --test-concurrency=1 $TEST_FILES >/dev/ttyS1 2>&1
echo "VM-RESULT $?" >/dev/ttyS1
sync
reboot -f
