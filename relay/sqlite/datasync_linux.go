package sqlite

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasyncFile flushes f's data, and its metadata only where needed to read the
// data back (its size). The write-ahead log is overwritten in place once a
// checkpoint has copied it, so most flushes need no journal commit.
func datasyncFile(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
