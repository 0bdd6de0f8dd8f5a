//go:build unix

package sqlite

import (
	"os"
	"syscall"
)

// links returns how many directory entries name the file fi describes.
func links(fi os.FileInfo) (n uint64, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return uint64(st.Nlink), true
}
