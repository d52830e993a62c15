package raftlog

import (
	"os"
	"syscall"
)

// datasync makes f's data durable: fdatasync, as Pebble's WAL does on Linux (the file's size
// is included; its times are not).
func datasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}
