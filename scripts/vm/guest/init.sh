#!/bin/busybox sh
# The guest's /init (busybox): kernel modules, file systems, the runtime bundle and the clone from the host's
# 9p shares, then it becomes `enclave-runtime run`, the guest's PID 1, whose app is the test runner (app.sh).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node: the kernel could not open one for us.
exec </dev/console >/dev/console 2>&1
mount -t tmpfs -o mode=1777 tmpfs /tmp
. /vm/env
report() { echo "$*" >/dev/ttyS1; }
for module in $(cat /modules/order); do
  insmod "/modules/$module.ko" || { report "vm init: insmod $module failed"; report "VM-RESULT 97"; reboot -f; }
done
mkdir -p "$REPO"
opts=trans=virtio,version=9p2000.L,msize=512000,ro
if ! mount -t 9p -o "$opts" repo "$REPO" || ! mount -t 9p -o "$opts" bundle /opt/bundle; then
  report "vm init: cannot mount the 9p shares"; report "VM-RESULT 98"; reboot -f
fi
# Node and its libraries come from the bundle; the clone's node_modules and dist/ hold the tests.
ln -s /opt/bundle/bin/node /usr/bin/node
mkdir -p /lib/x86_64-linux-gnu
for lib in /opt/bundle/lib/*.so*; do ln -s "$lib" /lib/x86_64-linux-gnu/; done
ln -s /opt/bundle/lib/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2
export HOME=/tmp ENCLAVE_VM_GUEST=1
cd /tmp
node "$REPO/dist/test/vm/boot-measure.js" >/dev/ttyS1 2>&1 || { report "vm init: the boot measurement failed"; report "VM-RESULT 96"; reboot -f; }
# The guest comes up with lo down and the kernel's default hostname: the runtime, as PID 1, must fix both.
exec /opt/bundle/bin/enclave-runtime run --config /vm/enclave.toml -- /bin/sh /vm/app.sh
