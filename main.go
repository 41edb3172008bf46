// Command hast is FreeBSD's HAST rebuilt for Linux: one binary that is the daemon (`hast daemon`,
// or invoked as hastd) and the control tool (`hast role|create|list|status|dump`, or invoked as
// hastctl). See README.md.
package main

import (
	"os"
	"path/filepath"

	"hast/appliance"
	"hast/image"
)

func main() {
	if image.IsInit() { // PID 1 of a guest booted from an image initramfs
		image.Init()
	}
	cli := &appliance.CLI{Stdout: os.Stdout, Stderr: os.Stderr}
	args := os.Args[1:]
	switch filepath.Base(os.Args[0]) {
	case "hastd":
		args = append([]string{"daemon"}, args...)
	}
	os.Exit(cli.Main(args))
}
