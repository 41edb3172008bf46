// Package image is the seed of the appliance image and the bench the guest tests run on: it
// fetches Debian's 6.12 cloud kernel (which has ublk_drv; the build host's kernel does not)
// through apt and caches it, writes an initramfs whose /init is the hast binary, boots it in
// qemu (TCG, or KVM where /dev/kvm runs a stock kernel) and collects what the guest prints on
// its serial console. Nothing here needs root.
//
// Inside the guest, hast started as /init by the kernel runs [Init]: it mounts the pseudo file
// systems, loads the modules the initramfs lists, brings up loopback, runs the command the
// initramfs names, prints its exit status on the console and powers the machine off.
//
// Facts and timings behind this shape: docs/ublk-and-vm.md (shared docs).
package image
