//go:build !linux

package peers

import "syscall"

// dieWithParent has no portable equivalent outside Linux: the processes
// are killed by the tests' cleanup only.
func dieWithParent() *syscall.SysProcAttr { return nil }
