package main

import (
	"path/filepath"
	"strings"

	"github.com/herald-dev/herald/internal/kubectlherald"
)

// kubectl finds the herald binary as `kubectl-herald` on PATH (make
// kubectl-plugin, or krew) and runs it as `kubectl herald ...`.
const pluginName = "kubectl-herald"

func init() {
	register("kubectl", "the kubectl plugin (installed as kubectl-herald): failures, event, deadletters, replay, console", kubectlherald.Run)
}

// asPlugin says whether argv0 is the plugin's name (kubectl-herald, or
// kubectl-herald.exe), so the arguments are the plugin's.
func asPlugin(argv0 string) bool {
	return strings.TrimSuffix(filepath.Base(argv0), ".exe") == pluginName
}
