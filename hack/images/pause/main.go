// Command pause is the e2e cluster's sandbox ("pause") process: it holds a
// pod's namespaces and does nothing until the runtime stops it. Built here
// because no image can be pulled on the machines Herald is built on.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1 of the sandbox it gets no default signal handling, so
	// SIGTERM/SIGINT must be caught or the runtime would wait for SIGKILL.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// Zombies of the pod's processes are reaped by the kernel only when
	// their parent waits; children re-parented to the sandbox (with a
	// shared PID namespace) are reaped here.
	chld := make(chan os.Signal, 16)
	signal.Notify(chld, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-chld:
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
