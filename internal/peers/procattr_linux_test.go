package peers

import "syscall"

// dieWithParent makes the kernel kill a test's etcd and kube-apiserver when
// the test binary dies without cleaning up (a panic, go test's timeout).
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
